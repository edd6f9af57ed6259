"""``service.lookups.HomeLookup`` on SQLite and PostgreSQL: a storm of requests reads
its homes in a few statements, each request gets its own row (or its own 404), a lone
request is not held back, and a database failure reaches every request it concerns."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from hometier.service.lookups import BATCH, HomeLookup
from hometier.state import queries as q
from hometier.state.db import open_database

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as ex:
        yield ex


def test_a_storm_reads_its_homes_in_a_few_statements(db, pool) -> None:
    users = [f"u{i:04d}" for i in range(BATCH + 150)]
    for u in users:
        q.get_or_create_home(db, u, f"/home/{u}", T0)
    q.transition(db, "u0007", "active", "archived", "t", T0, archived_at=T0)
    # Hostile and unknown names sit among them: each gets its own answer.
    asked = [*users, "nobody", "u0001'; DROP TABLE homes; --", "u0003", "u0003"]
    lookup = HomeLookup(db, pool)

    async def storm():
        return await asyncio.gather(*(lookup.get(u) for u in asked), return_exceptions=True)

    answers = asyncio.run(storm())
    for user, got in zip(asked, answers, strict=True):
        if user in users:
            assert not isinstance(got, BaseException), (user, got)
            assert got.user == user
        else:
            assert isinstance(got, q.HomeNotFound), (user, got)
    assert answers[7].state == "archived"
    # The first name goes alone (not held back), the rest in batches of at most BATCH.
    print(f"{len(asked)} lookups in {lookup.statements} statements")
    assert 2 <= lookup.statements <= 4
    assert q.get_home(db, "u0001").user == "u0001"  # the hostile name changed nothing


def test_one_request_alone_is_answered(db, pool) -> None:
    q.get_or_create_home(db, "alice", "/home/alice", T0)
    lookup = HomeLookup(db, pool)

    async def twice():
        first = await lookup.get("alice")
        with pytest.raises(q.HomeNotFound):
            await lookup.get("bob")
        return first

    assert asyncio.run(twice()).path == "/home/alice"
    assert lookup.statements == 2


def test_a_database_failure_reaches_every_waiting_request(tmp_path, pool) -> None:
    path = tmp_path / "state.db"
    db = open_database(f"sqlite:///{path}")
    q.get_or_create_home(db, "alice", "/home/alice", T0)
    db.dispose()
    path.rename(tmp_path / "kept.db")
    path.mkdir()  # the database file cannot be opened any more
    lookup = HomeLookup(db, pool)

    async def storm():
        return await asyncio.gather(
            *(lookup.get(u) for u in ["alice", "bob", "alice"]), return_exceptions=True
        )

    answers = asyncio.run(storm())
    assert all(isinstance(a, Exception) and not isinstance(a, q.HomeNotFound) for a in answers)
    db.dispose()
    path.rmdir()
    (tmp_path / "kept.db").rename(path)
    # The next request, once the database is back, is answered.
    assert asyncio.run(lookup.get("alice")).user == "alice"
    db.dispose()
