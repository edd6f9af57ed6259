"""The state side of ``scale_bench.py``: a state database of 50,000 homes (PostgreSQL,
as a hub of that size runs it) and the admin page, API, metrics and status requests
against it, by ``state_bench.run_state``. With ``smoke``: 2,000 homes on SQLite, once."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_state(work: Path, smoke: bool) -> dict[str, Any]:
    import state_bench

    folder = work / "state"
    folder.mkdir(parents=True, exist_ok=True)
    backend = "sqlite" if smoke else "postgresql"
    homes = 2000 if smoke else 50_000
    doc = state_bench.run_state(backend, homes=homes, repeat=1 if smoke else 3, workdir=folder)
    rows = [
        [
            f"state, {homes:,} homes on {backend}: {name}",
            f"{r['median']:.3f} s",
            f"worst {r['worst']:.3f} s, load {r['load']}",
        ]
        for name, r in doc["requests"].items()
    ]
    return {"rows": rows, **doc}
