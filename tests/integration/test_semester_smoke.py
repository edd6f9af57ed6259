"""The semester replay keeps working: its smoke size, end to end, on the real servers.

``bench/semester.py --smoke --tamper``: 40 users over four virtual weeks against the real
archiver loop, service, SeaweedFS and PostgreSQL (about a minute here). Timings are the
benchmark's to print, never asserted; what is asserted is that the replay really did
the work (homes archived, logins that waited for a restore from the bucket and from the
quarantine, every restore compared), that nothing was lost or differs, and that the
final check is not blind: ``--tamper`` flips one byte of a file (same size, same mtime)
in one home and a permission bit in another after the clean check, and the second
check must find exactly those two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "semester.py"


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.postgres
def test_semester_smoke_loses_nothing_and_its_check_catches_tampering(tmp_path: Path) -> None:
    from fixtures.servers import ServerUnavailable, find_pg_bin, find_weed

    try:
        find_weed()
        find_pg_bin()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--tamper",
         "--work", str(tmp_path / "work"), "--out", str(out), "--svg", str(out / "p.svg")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    doc = json.loads(next(out.glob("semester-*.json")).read_text())
    assert doc["shadow_check"]["differences"] == 0
    (run,) = doc["runs"]
    (summary,) = doc["summaries"]
    final = run["final"]
    assert run["errors"] == []
    assert final["files_lost"] == 0
    assert final["home_differences"] == final["snapshot_differences"] == 0
    assert final["snapshot_unexpected"] == final["quarantine_differences"] == 0
    assert final["homes"] == doc["users"]
    assert final["snapshots"] >= summary["archives"]["archived"] > 0
    # Logins waited, from both places, and every restored home was compared.
    sources = {w["source"] for w in run["waits"]}
    assert sources == {"bucket", "quarantine"}, run["waits"]
    assert all(w["state"] == "done" for w in run["waits"])
    assert run["restore_checks"]["homes"] == len(run["waits"])
    assert run["restore_checks"].get("differences", 0) == 0
    # The clean check passed; the tampered one found the byte and the mode, nothing else.
    found = run["tamper"]
    assert found["home_differences"] == 2, found
    kinds = " ".join(found["examples"])
    assert "content" in kinds and "mode" in kinds
    html = next(out.glob("semester-*.html")).read_text()
    assert html.count("<svg") >= 4 and "without hometier" in html
    assert (out / "p.svg").read_text().startswith("<svg")
    logins = next(out.glob("semester-*-logins.csv")).read_text().splitlines()
    assert logins[0] == "user,time" and len(logins) > doc["trace"]["sessions"]
