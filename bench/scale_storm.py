"""The login storm of ``scale_bench.py``: 500 users logging in at once through a real
JupyterHub (``storm_bench.run_storm``), each home restored from the bucket before its
server starts. With ``smoke``: 10 logins."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_storm(work: Path, smoke: bool) -> dict[str, Any]:
    import storm_bench

    logins = 10 if smoke else 500
    fig = storm_bench.run_storm(logins, workdir=str(work / "storm"), verbose=not smoke)
    load = f"load before {fig.get('load_before')}, after {fig.get('load_after')}"
    rows = [
        [
            f"storm of {logins} logins through JupyterHub: accepted p50 / p95 / max",
            f"{fig['accepted_p50']} / {fig['accepted_p95']} / {fig['accepted_max']} s",
            f"target: every one within 5 s; {load}",
        ],
        [
            f"storm of {logins} logins: restored p50 / p95 / max",
            f"{fig['restored_p50']} / {fig['restored_p95']} / {fig['restored_max']} s",
            f"target: p95 within 10 s; {fig['failed']} failed, {fig['refused']} refused, "
            f"{fig['wrong_content']} wrong",
        ],
    ]
    return {"rows": rows, **fig}
