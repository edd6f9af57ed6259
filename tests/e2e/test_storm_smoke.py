"""The login-storm benchmark (``bench/storm_bench.py``) in its smoke size: 10 logins at
once through a real JupyterHub, ``hometier serve``, SeaweedFS and PostgreSQL. Timings are
printed, never asserted (the benchmark's job); what must hold is that every login was
accepted and restored, every home came back intact, and ``run_storm`` returns the figures
other harnesses import."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fixtures.servers import ServerUnavailable

BENCH = Path(__file__).resolve().parents[2] / "bench" / "storm_bench.py"

pytestmark = [pytest.mark.slow, pytest.mark.hub, pytest.mark.s3, pytest.mark.postgres]


def test_a_small_storm_restores_every_home() -> None:
    spec = importlib.util.spec_from_file_location("storm_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    try:
        figures = bench.run_storm(10, verbose=True)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    print(figures)
    assert figures["logins"] == 10
    assert figures["failed"] == 0 and figures["refused"] == 0 and figures["wrong_content"] == 0
    assert figures["ready"] == 10
    for key in ("accepted_p50", "accepted_p95", "restored_p50", "restored_p95", "load_during"):
        assert key in figures
    assert figures["accepted_p50"] <= figures["restored_p50"]
