"""Two archiver processes on one PostgreSQL and one bucket never archive a home twice.

Both run ``hometier serve --once`` with a policy that makes every home eligible, released
at the same instant (each waits for a start file after its imports). Claims are taken with
``FOR UPDATE SKIP LOCKED`` and a compare-and-set, so every home must be archived by
exactly one of them, its files moved aside exactly once, and every home must come back
byte-identical afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import QUARANTINE_DIR, Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.restoring import restore_home
from hometier.repo import Repository
from hometier.repo.snapshot import user_key
from hometier.state import ACTIVE, ARCHIVED, ARCHIVING, open_database, queries
from hometier.store import open_store

from .conftest import manifest, write_home
from .released import archivers_at_once

USERS = [f"user{i:02d}" for i in range(10)]

CONFIG = """
c.Archiver.inactive_after = "0s"
c.Archiver.quarantine_for = "1d"
c.Archiver.max_per_cycle = 100
c.Hometier.workers = 2
"""


@pytest.mark.slow
def test_two_archivers_archive_every_home_exactly_once(
    pg_url: str, s3_url: str, tmp_path: Path
) -> None:
    homes = tmp_path / "homes"
    for user in USERS:
        write_home(homes / user, user)
    before = {user: manifest(homes / user) for user in USERS}
    # Neither the repository nor the schema exists yet: the two replicas also race to
    # create the one (conditional put) and migrate the other (advisory lock).
    (tmp_path / "hometier_config.py").write_text(CONFIG)
    env = {
        **os.environ,
        "HOMETIER_DB": pg_url,
        "HOMETIER_STORE": s3_url,
        "HOMETIER_HOMES": str(homes),
    }
    env.pop("HOMETIER_FAULTS", None)
    reports = archivers_at_once(tmp_path, env, tmp_path / "go")

    archived_by = [
        sorted(r["user"] for r in rep["results"] if r["outcome"] == "archived") for rep in reports
    ]
    assert sorted(archived_by[0] + archived_by[1]) == USERS, archived_by
    assert all(rep["errors"] == [] for rep in reports), [rep["errors"] for rep in reports]

    db = open_database(pg_url)
    try:
        for user in USERS:
            moves = [
                (e.from_state, e.to_state, e.actor)
                for e in queries.events(db, user, kind="state", limit=1000)
            ]
            done = [m for m in moves if m[:2] == (ARCHIVING, ARCHIVED)]
            assert len(done) == 1, (user, moves)
            assert queries.get_home(db, user).state == ARCHIVED
            assert sorted(os.listdir(homes / user)) == [NOTICE_NAME]
            mine = [
                q for q in os.listdir(homes / QUARANTINE_DIR) if q.startswith(user_key(user) + ".")
            ]
            assert len(mine) == 1, (user, mine)  # moved aside once, not twice
            assert manifest(homes / QUARANTINE_DIR / mine[0]) == before[user]
        lc = Lifecycle(
            db=db,
            repo=Repository.open(open_store(s3_url)),
            layout=HomeLayout(homes),
            workers=2,
        )
        for i, user in enumerate(USERS):
            lc.restore_from_quarantine = i % 2 == 0
            result = restore_home(lc, user, "test")
            assert result.outcome == "restored"
            assert result.source == ("quarantine" if i % 2 == 0 else "bucket")
            assert manifest(homes / user) == before[user], user
            assert queries.get_home(db, user).state == ACTIVE
    finally:
        db.dispose()
