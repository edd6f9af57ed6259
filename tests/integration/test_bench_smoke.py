"""The benchmark harnesses keep working: their smoke runs (tiny homes) on the real S3 server.

Timings are printed by the harnesses, never asserted here; only that every step ran and
every restore matched its source (the harnesses exit 1 otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
BENCH = BENCH_DIR / "engine_bench.py"
CORPUS_BENCH = BENCH_DIR / "corpus_bench.py"


@pytest.mark.slow
@pytest.mark.s3
def test_bench_smoke_runs_and_every_restore_matches(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = next(tmp_path.glob("engine-*.md")).read_text()
    assert "| hometier | restore |" in report and "| tar+zstd | restore |" in report


@pytest.mark.slow
@pytest.mark.s3
def test_corpus_bench_smoke_runs_every_tool_and_hometier_restores_match(
    tmp_path: Path,
) -> None:
    missing = [t for t in ("restic", "pigz", "zstd", "git") if shutil.which(t) is None]
    if not os.access("/usr/bin/time", os.X_OK):
        missing.append("time (/usr/bin/time)")
    if importlib.util.find_spec("boto3") is None:
        missing.append("boto3 (pip)")
    if missing:
        pytest.skip(f"the corpus benchmark needs {', '.join(missing)} (scripts/test installs them)")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(CORPUS_BENCH), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # One document per corpus; --smoke runs the generated one only.
    docs = json.loads(next(out.glob("corpus-*.json")).read_text())
    assert isinstance(docs, list) and len(docs) == 1
    doc = docs[0]
    assert doc["errors"] == [] and doc["hometier_mismatches"] == []
    tools = ("hometier", "tar|zstd", "tar+pigz+boto3", "restic")
    assert set(doc["archive"]) == set(tools)
    for tool in (*tools, "hometier CLI"):
        restored = {u: r for u, r in doc["restores"][tool].items() if not u.startswith("_")}
        assert set(restored) == set(doc["sample"]), tool
    for tool in ("hometier", "hometier CLI"):
        assert all(r["check"]["ok"] for u, r in doc["restores"][tool].items() if u != "_process")
    storm = doc["storms"]["hometier"]
    assert set(storm["jobs"]) == set(doc["storm_homes"]) and not storm["differences"]
    assert doc["incremental"] and all(i["check"]["ok"] for i in doc["incremental"])
    report = next(out.glob("corpus-*.md")).read_text()
    assert "**Targets**" in report and "restic" in report
