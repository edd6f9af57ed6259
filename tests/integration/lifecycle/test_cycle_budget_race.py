"""Two archiver processes running budgeted cycles at once on one PostgreSQL never archive a
home twice, and each walks no more than its own budget.

Rounds of two ``hometier serve --once`` processes, released together by a start file
(like ``test_two_archivers``), over more idle homes than one round can take
(``max_per_cycle`` = 4 each). Both read the same candidates, so they walk and choose the
same oldest homes; claims (``FOR UPDATE SKIP LOCKED`` and a compare-and-set) decide who
archives each. The test prints how many homes both chose in a round (the race hit).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import QUARANTINE_DIR
from hometier.repo.snapshot import user_key
from hometier.state import ARCHIVED, ARCHIVING, open_database, queries

from .conftest import manifest
from .released import archivers_at_once
from .test_cycle_budget import tiny_home

USERS = [f"user{i:02d}" for i in range(14)]
BUDGET = 4

CONFIG = f"""
c.Archiver.inactive_after = "0s"
c.Archiver.quarantine_for = "1d"
c.Archiver.max_per_cycle = {BUDGET}
c.Hometier.workers = 1
"""


def _round(tmp_path: Path, env: dict[str, str], n: int) -> list[dict[str, Any]]:
    return archivers_at_once(tmp_path, env, tmp_path / f"go-{n}")


@pytest.mark.slow
def test_two_budgeted_archivers_never_archive_a_home_twice(
    pg_url: str, s3_url: str, tmp_path: Path
) -> None:
    homes = tmp_path / "homes"
    for user in USERS:
        tiny_home(homes / user)
    before = {user: manifest(homes / user) for user in USERS}
    (tmp_path / "hometier_config.py").write_text(CONFIG)
    env = {
        **os.environ,
        "HOMETIER_DB": pg_url,
        "HOMETIER_STORE": s3_url,
        "HOMETIER_HOMES": str(homes),
    }
    env.pop("HOMETIER_FAULTS", None)

    archived: list[str] = []
    both_chose = 0
    for n in range(1, 6):
        reports = _round(tmp_path, env, n)
        chosen = [{d["user"] for d in r["decisions"] if d["chosen"]} for r in reports]
        both_chose += len(chosen[0] & chosen[1])
        for r in reports:
            assert r["errors"] == [], r["errors"]
            # Nothing here is active or out of bounds: a walk is a home it chose.
            assert r["walked"] <= BUDGET, r["walked"]
            archived += [x["user"] for x in r["results"] if x["outcome"] == "archived"]
        if len(archived) == len(USERS):
            break
    print(f"{n} rounds of two archivers; homes both chose: {both_chose}; archived {archived}")
    assert sorted(archived) == USERS  # each exactly once, in as many rounds as it took

    db = open_database(pg_url)
    try:
        for user in USERS:
            moves = [
                (e.from_state, e.to_state)
                for e in queries.events(db, user, kind="state", limit=1000)
            ]
            assert moves.count((ARCHIVING, ARCHIVED)) == 1, (user, moves)
            assert queries.get_home(db, user).state == ARCHIVED
            assert sorted(os.listdir(homes / user)) == [NOTICE_NAME]
            mine = [
                q for q in os.listdir(homes / QUARANTINE_DIR) if q.startswith(user_key(user) + ".")
            ]
            assert len(mine) == 1, (user, mine)  # moved aside once
            assert manifest(homes / QUARANTINE_DIR / mine[0]) == before[user]
    finally:
        db.dispose()
