"""``bench/state_bench.py --smoke`` keeps working: it builds a small state database,
serves the real admin page, API listing and metrics on 127.0.0.1 and times them.

Timings are printed by the benchmark, never asserted here; only that every request
answered 200 and the report and ``run_state``'s figures have their shape.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "state_bench.py"


def test_state_bench_smoke_runs(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    assert "| admin page (first page, by user) |" in r.stdout
    assert "load average" in r.stdout
    [result] = json.loads(out.read_text())
    assert result["backend"] == "sqlite" and result["build"]["homes"] == 2000
    for figures in result["requests"].values():
        assert {"median", "worst", "bytes", "load"} <= set(figures)


def test_run_state_is_importable_by_another_benchmark() -> None:
    spec = importlib.util.spec_from_file_location("state_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.run_state)
