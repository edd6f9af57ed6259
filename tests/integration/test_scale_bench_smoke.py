"""The scale benchmark keeps working: its smoke run (20,000 and 60,000 synthetic blobs,
fetch-home through a real JupyterHub and service, a state database of 2,000 homes and a
storm of 10 logins). Figures are printed by the harness,
never asserted here: only that every step ran and that the report says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale_bench.py"


@pytest.mark.slow
@pytest.mark.hub
def test_scale_bench_smoke(tmp_path: Path) -> None:
    if not os.access("/usr/bin/time", os.X_OK):
        pytest.skip("the scale benchmark needs GNU time (apt-get install time)")
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--smoke",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    doc = json.loads(next(out.glob("scale-*.json")).read_text())
    assert list(doc["repos"]) == ["empty", "20k", "60k"]
    for name in ("empty", "60k"):
        ops = doc["ops"][name]
        assert {"restore", "backup_first", "backup_warm", "fetch_home"} <= set(ops), ops
        assert ops["restore"]["files"] > 300 and ops["fetch_home"]["files"] > 300
    real = doc["ops"]["20k"]
    assert real["prune_mark"]["packs_repacked"] > 0 and real["prune_sweep"]["packs_deleted"] > 0
    assert real["repair_index"]["entries"] > 20_000
    assert doc["ops"]["60k"]["backup_first"]["cache_records"] > 60_000
    # Its other parts (bench/scale_state.py, bench/scale_storm.py): the state side and a
    # storm through a real JupyterHub, at smoke size.
    assert (
        "hometier status (a table: the first 100 homes, paged in the database)"
        in (doc["state"]["requests"])
    )
    storm = doc["storm"]
    assert storm["logins"] == 10 and storm["failed"] == 0 and storm["wrong_content"] == 0
    report = next(out.glob("scale-*.md")).read_text()
    assert "**Targets**" in report
    assert "storm of 10 logins through JupyterHub" in report
