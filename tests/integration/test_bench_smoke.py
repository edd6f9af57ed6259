"""The benchmark harness keeps working: its smoke run (tiny homes) on the real S3 server.

Timings are printed by the harness, never asserted here; only that every step ran and
every restore matched its source (the harness exits 1 otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine_bench.py"


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
