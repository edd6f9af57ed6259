"""Listing, totals and the daily tiers in the database (``state.listing``), on SQLite and
PostgreSQL: every page, filter and order agrees with the same thing done in Python."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from hometier.errors import UsageError
from hometier.state import listing
from hometier.state import queries as q
from hometier.state.queries import SnapshotInfo

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _populate(db, n: int = 30, seed: int = 7) -> dict[str, dict]:
    """``n`` homes in every state, some with equal sizes and missing activity."""
    rnd = random.Random(seed)
    want: dict[str, dict] = {}
    names = [f"user{i:03d}" for i in range(n)] + ["a_b", "a%b", "MiXeD"]
    for i, user in enumerate(names):
        q.get_or_create_home(db, user, f"/home/{user}", T0 + timedelta(seconds=i))
        size = rnd.choice([0, 100, 100, 5000, rnd.randrange(1, 10**9)])
        q.set_sizes(db, user, size, 1)
        if rnd.random() < 0.7:
            q.record_activity(db, user, T0 + timedelta(hours=rnd.randrange(100)), "hub")
        snap_bytes = None
        if rnd.random() < 0.5:
            snap_bytes = rnd.randrange(1, 10**6)
            info = SnapshotInfo(f"s-{user}", T0, files=1, bytes=snap_bytes, stored_bytes=7)
            q.record_snapshot(db, user, info, T0)
        state = rnd.choice(["active", "archived", "failed", "active"])
        if state == "archived":
            q.transition(db, user, "active", "archived", "t", T0, archived_at=T0)
        elif state == "failed":
            q.fail(db, user, "boom", "t", T0)
        home = q.get_home(db, user)
        want[user] = {
            "home": home,
            "size": home.hot_bytes or (snap_bytes or 0),
            "snap": snap_bytes is not None,
        }
    return want


def _python_order(want: dict[str, dict], key: str, desc: bool) -> list[str]:
    def value(u: str):
        return want[u]["size"] if key == "size" else getattr(want[u]["home"], key)

    users = sorted(want, key=lambda u: want[u]["home"].id, reverse=desc)
    present = [u for u in users if value(u) is not None]
    present.sort(key=value, reverse=desc)  # stable: ties keep the id order
    return present + [u for u in users if value(u) is None]


def test_cursor_pages_walk_every_home_in_order(db):
    want = _populate(db)
    for key in listing.SORTS:
        for desc in (False, True):
            seen: list[str] = []
            cursor = None
            for _ in range(100):
                page = listing.page_homes(db, sort=key, desc=desc, limit=7, cursor=cursor)
                assert page.total == len(want)
                seen += [r.home.user for r in page.rows]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == _python_order(want, key, desc), (key, desc)
            # Offsets give the same order.
            by_offset = []
            for offset in range(0, len(want), 11):
                page = listing.page_homes(db, sort=key, desc=desc, limit=11, offset=offset)
                by_offset += [r.home.user for r in page.rows]
            assert by_offset == seen, (key, desc)


def test_filters_and_sizes(db):
    want = _populate(db)
    page = listing.page_homes(db, state="archived", limit=1000)
    assert {r.home.user for r in page.rows} == {
        u for u, w in want.items() if w["home"].state == "archived"
    }
    assert all(r.size == want[r.home.user]["size"] for r in page.rows)
    # LIKE's wildcards are plain characters in a search; case does not matter.
    assert [r.home.user for r in listing.page_homes(db, q="a_b").rows] == ["a_b"]
    assert [r.home.user for r in listing.page_homes(db, q="A%").rows] == ["a%b"]
    assert [r.home.user for r in listing.page_homes(db, q="mixed").rows] == ["MiXeD"]
    assert listing.page_homes(db, q="user00", state="failed").total == sum(
        1 for u, w in want.items() if "user00" in u and w["home"].state == "failed"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sort": "path"},
        {"sort": "user; DROP TABLE homes"},
        {"state": "gone"},
        {"limit": 0},
        {"limit": 100_000},
        {"offset": -1},
        {"cursor": "not-a-cursor"},
        {"cursor": "W1tdLDFd"},  # [[],1]
    ],
)
def test_bad_arguments_are_usage_errors(db, kwargs):
    _populate(db, n=3)
    with pytest.raises(UsageError):
        listing.page_homes(db, **kwargs)


def test_totals_agree_with_the_rows(db):
    want = _populate(db)
    # A restored home (archived_at before restored_at) is hot again.
    q.transition(db, "user001", q.get_home(db, "user001").state, "active", "t", T0)
    want["user001"]["home"] = q.get_home(db, "user001")
    t = listing.tier_totals(db)
    homes = [w["home"] for w in want.values()]
    assert t.homes == len(homes)
    assert t.hot_bytes == sum(w["size"] for w in want.values() if not w["home"].is_cold)
    assert t.archived_bytes == sum(w["size"] for w in want.values() if w["home"].is_cold)
    assert t.hot_homes + t.cold_homes == len(homes)
    assert t.stored_bytes == 7 * sum(w["snap"] for w in want.values())
    assert t.by_state["failed"] == sum(1 for h in homes if h.state == "failed")


def test_tier_days_are_rebuilt_once_and_today_is_the_totals(db):
    day = T0
    q.get_or_create_home(db, "a", "/home/a", day)
    q.get_or_create_home(db, "b", "/home/b", day)
    q.set_sizes(db, "a", 900, 1)
    q.set_sizes(db, "b", 50, 1)
    q.transition(db, "a", "active", "archiving", "t", day + timedelta(days=2))
    info = SnapshotInfo("s1", day + timedelta(days=2), files=1, bytes=1000, stored_bytes=400)
    q.record_snapshot(db, "a", info, day + timedelta(days=2))
    q.transition(db, "a", "archiving", "archived", "t", day + timedelta(days=2, minutes=1))
    q.transition(db, "a", "archived", "restoring", "t", day + timedelta(days=4))
    q.fail(db, "a", "x", "t", day + timedelta(days=4, minutes=1), from_states="restoring")
    now = day + timedelta(days=5)
    totals = listing.tier_totals(db)
    rows = listing.tier_days(db, (day - timedelta(days=30)).date(), totals, now)
    got = [(r.day.day, r.hot_bytes, r.archived_bytes, r.stored_bytes, r.source) for r in rows]
    assert got == [
        (1, 950, 0, 0, "rebuilt"),
        (2, 950, 0, 0, "rebuilt"),
        (3, 50, 1000, 400, "rebuilt"),
        (4, 50, 1000, 400, "rebuilt"),
        (5, 50, 1000, 400, "rebuilt"),  # a failed restore leaves it in the bucket
        (6, totals.hot_bytes, totals.archived_bytes, 400, "seen"),
    ]
    # A second look reads the kept rows; a day once seen is never rebuilt over.
    again = listing.tier_days(db, (day - timedelta(days=30)).date(), totals, now)
    assert [(r.day, r.hot_bytes, r.source) for r in again] == [
        (r.day, r.hot_bytes, r.source) for r in rows
    ]


def test_a_page_view_with_unchanged_totals_writes_nothing(db):
    from sqlalchemy import event

    _populate(db, n=5)
    totals = listing.tier_totals(db)
    writes: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _record(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append(statement)

    now = T0 + timedelta(days=1)
    listing.record_tier_day(db, totals, now)
    assert len(writes) == 1
    for _ in range(5):
        listing.record_tier_day(db, totals, now + timedelta(minutes=1))
    assert len(writes) == 1
    q.set_sizes(db, "user000", 12345, 1)
    listing.record_tier_day(db, listing.tier_totals(db), now + timedelta(minutes=2))
    assert len(writes) == 3  # the size, then today's row again
