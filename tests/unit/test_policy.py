"""``select_idle``: who is archived now, and why not the others. Pure: no clock, no I/O.

The table lists one home per row with the decision expected at ``NOW`` under ``POLICY``
(idle after 30 days, between 1 kB and 1 GB); each row is also checked alone, so that a
row's reason never depends on its neighbours.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import replace

import pytest

from hometier.errors import UsageError
from hometier.lifecycle.policy import (
    HomeFacts,
    Policy,
    in_quiet_hours,
    parse_quiet_hours,
    select_idle,
)

UTC = dt.UTC
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)
POLICY = Policy(inactive_after=30 * DAY, min_size=1000, max_size=10**9, max_per_cycle=50)
KB = 10_000


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


# user, facts (besides user), chosen, reason substring
TABLE: list[tuple[str, dict[str, object], bool, str]] = [
    ("idle-40d", {"last_activity": ago(days=40)}, True, "idle for 40d"),
    ("idle-400d", {"last_activity": ago(days=400)}, True, "idle for 400d"),
    ("idle-exactly-30d", {"last_activity": ago(days=30)}, True, "idle for 30d"),
    ("idle-30d-minus-1s", {"last_activity": ago(days=30, seconds=-1)}, False, "active 29d ago"),
    ("recent-2d", {"last_activity": ago(days=2)}, False, "active 2d ago"),
    (
        "recent-hub",
        {"last_activity": ago(hours=3), "activity_source": "hub"},
        False,
        "active 3h ago (hub)",
    ),
    (
        "recent-files",
        {"last_activity": ago(minutes=5), "activity_source": "files"},
        False,
        "active 5m ago (files)",
    ),
    ("recent-seconds", {"last_activity": ago(seconds=20)}, False, "active 0m ago"),
    ("never-seen", {"last_activity": None}, True, "no activity ever seen"),
    ("clock-skew", {"last_activity": NOW + dt.timedelta(hours=2)}, False, "clock skew"),
    ("clock-skew-far", {"last_activity": NOW + 90 * DAY}, False, "clock skew"),
    ("exempt", {"exempt": True, "last_activity": ago(days=99)}, False, "exempt"),
    ("running", {"server_running": True, "last_activity": ago(days=99)}, False, "server"),
    ("lease", {"leases": 1, "last_activity": ago(days=99)}, False, "1 active lease(s)"),
    ("leases", {"leases": 3, "last_activity": None}, False, "3 active lease(s)"),
    ("archived", {"state": "archived", "last_activity": ago(days=99)}, False, "state is archived"),
    ("archiving", {"state": "archiving"}, False, "state is archiving"),
    ("restoring", {"state": "restoring"}, False, "state is restoring"),
    ("failed", {"state": "failed", "last_activity": ago(days=99)}, False, "state is failed"),
    ("too-small", {"hot_bytes": 999, "last_activity": ago(days=99)}, False, "min_size"),
    ("empty", {"hot_bytes": 0, "last_activity": ago(days=99)}, False, "min_size"),
    ("min-size-exactly", {"hot_bytes": 1000, "last_activity": ago(days=99)}, True, "idle"),
    ("too-large", {"hot_bytes": 10**9 + 1, "last_activity": ago(days=99)}, False, "max_size"),
    ("max-size-exactly", {"hot_bytes": 10**9, "last_activity": ago(days=99)}, True, "idle"),
    # Several reasons: the first that applies is given.
    ("archived+exempt", {"state": "archived", "exempt": True}, False, "state is archived"),
    ("exempt+running", {"exempt": True, "server_running": True}, False, "exempt"),
    ("running+lease", {"server_running": True, "leases": 1}, False, "server"),
    ("lease+recent", {"leases": 1, "last_activity": ago(days=1)}, False, "lease"),
    ("recent+small", {"hot_bytes": 1, "last_activity": ago(days=1)}, False, "active 1d ago"),
]


def facts(user: str, extra: dict[str, object]) -> HomeFacts:
    base: dict[str, object] = {"state": "active", "hot_bytes": KB}
    return HomeFacts(user=user, **{**base, **extra})


@pytest.mark.parametrize(("user", "extra", "chosen", "reason"), TABLE, ids=[r[0] for r in TABLE])
def test_one_home(user: str, extra: dict[str, object], chosen: bool, reason: str) -> None:
    [d] = select_idle([facts(user, extra)], NOW, POLICY)
    assert (d.user, d.chosen) == (user, chosen)
    assert reason in d.reason, d.reason
    home = facts(user, extra)
    want_idle = NOW - home.last_activity if home.last_activity else None
    assert d.idle_for == want_idle


def test_the_whole_table_at_once() -> None:
    decisions = select_idle([facts(u, e) for u, e, _, _ in TABLE], NOW, POLICY)
    assert sorted(d.user for d in decisions) == sorted(u for u, *_ in TABLE)
    got = {d.user: (d.chosen, d.reason) for d in decisions}
    for user, _, chosen, reason in TABLE:
        assert got[user][0] == chosen, user
        assert reason in got[user][1], (user, got[user][1])
    # Chosen ones first, least recently active first (never seen counts as oldest).
    chosen_users = [d.user for d in decisions if d.chosen]
    assert decisions[: len(chosen_users)] == [d for d in decisions if d.chosen]
    assert chosen_users == [
        "never-seen",
        "idle-400d",
        "max-size-exactly",
        "min-size-exactly",
        "idle-40d",
        "idle-exactly-30d",
    ]


def test_max_per_cycle_overflow_keeps_the_newest_for_next_cycle() -> None:
    homes = [facts(f"u{i}", {"last_activity": ago(days=31 + i)}) for i in range(6)]
    homes.append(facts("never", {"last_activity": None}))
    homes.append(facts("busy", {"last_activity": ago(days=1)}))
    decisions = select_idle(homes, NOW, replace(POLICY, max_per_cycle=3))
    assert [(d.user, d.chosen) for d in decisions[:3]] == [
        ("never", True),
        ("u5", True),
        ("u4", True),
    ]
    rest = {d.user: d.reason for d in decisions[3:]}
    assert not any(d.chosen for d in decisions[3:])
    for user in ("u0", "u1", "u2", "u3"):
        assert rest[user] == "over max_per_cycle; next cycle"
    assert rest["busy"].startswith("active 1d ago")
    assert len(decisions) == len(homes)


def test_max_per_cycle_zero_chooses_nobody() -> None:
    decisions = select_idle(
        [facts("a", {"last_activity": ago(days=99)})], NOW, replace(POLICY, max_per_cycle=0)
    )
    assert [(d.chosen, d.reason) for d in decisions] == [(False, "over max_per_cycle; next cycle")]


def test_ties_are_broken_by_user_name() -> None:
    same = ago(days=45)
    homes = [facts(u, {"last_activity": same}) for u in ("carol", "alice", "bob")]
    assert [d.user for d in select_idle(homes, NOW, POLICY)] == ["alice", "bob", "carol"]


def test_max_size_zero_means_no_cap() -> None:
    huge = facts("huge", {"hot_bytes": 10**15, "last_activity": ago(days=99)})
    [d] = select_idle([huge], NOW, replace(POLICY, max_size=0))
    assert d.chosen


def test_no_homes_no_decisions() -> None:
    assert select_idle([], NOW, POLICY) == []


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        select_idle([facts("a", {})], NOW.replace(tzinfo=None), POLICY)
    with pytest.raises(ValueError):
        select_idle([], dt.datetime(2024, 1, 1), POLICY)


def test_now_in_another_zone_is_the_same_instant() -> None:
    tokyo = NOW.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo"))
    home = facts("a", {"last_activity": ago(days=30)})
    assert select_idle([home], tokyo, POLICY) == select_idle([home], NOW, POLICY)


# --- quiet hours -------------------------------------------------------------------------


def at(hh: int, mm: int = 0) -> dt.datetime:
    return NOW.replace(hour=hh, minute=mm)


QUIET = [
    # (quiet hours, local time zone, now, quiet?)
    ("08:00-20:00", "UTC", at(8), True),
    ("08:00-20:00", "UTC", at(12), True),
    ("08:00-20:00", "UTC", at(19, 59), True),
    ("08:00-20:00", "UTC", at(20), False),
    ("08:00-20:00", "UTC", at(7, 59), False),
    ("08:00-20:00", "UTC", at(0), False),
    # Wrapping midnight: 22:00 until 06:00 the next morning.
    ("22:00-06:00", "UTC", at(22), True),
    ("22:00-06:00", "UTC", at(23, 30), True),
    ("22:00-06:00", "UTC", at(0), True),
    ("22:00-06:00", "UTC", at(5, 59), True),
    ("22:00-06:00", "UTC", at(6), False),
    ("22:00-06:00", "UTC", at(12), False),
    ("22:00-06:00", "UTC", at(21, 59), False),
    # Local time: 06:30 UTC is 08:30 in Berlin (summer time).
    ("08:00-20:00", "Europe/Berlin", at(6, 30), True),
    ("08:00-20:00", "Europe/Berlin", at(5, 30), False),
    ("08:00-20:00", "Europe/Berlin", at(18, 30), False),
    ("22:00-06:00", "America/New_York", at(3), True),  # 23:00 the day before
    ("22:00-06:00", "America/New_York", at(12), False),  # 08:00
]


@pytest.mark.parametrize(("hours", "zone", "now", "quiet"), QUIET)
def test_quiet_hours(hours: str, zone: str, now: dt.datetime, quiet: bool) -> None:
    policy = replace(POLICY, quiet_hours=parse_quiet_hours(hours), timezone=zoneinfo.ZoneInfo(zone))
    assert in_quiet_hours(now, policy) is quiet
    idle = facts("idle", {"last_activity": now - 99 * DAY})
    exempt = facts("exempt", {"exempt": True, "last_activity": now - 99 * DAY})
    decisions = {d.user: d for d in select_idle([idle, exempt], now, policy)}
    assert decisions["idle"].chosen is not quiet
    if quiet:
        assert decisions["idle"].reason == "quiet hours"
    assert decisions["exempt"].reason == "exempt"  # its own reason wins over the hour


def test_no_quiet_hours() -> None:
    assert not in_quiet_hours(NOW, POLICY)
    assert parse_quiet_hours("") is None
    assert parse_quiet_hours("   ") is None


def test_parse_quiet_hours() -> None:
    assert parse_quiet_hours("08:00-20:00") == (dt.time(8), dt.time(20))
    assert parse_quiet_hours(" 22:30 - 06:15 ") == (dt.time(22, 30), dt.time(6, 15))


@pytest.mark.parametrize("value", ["8-20", "08:00", "08:00-", "25:00-26:00", "noon-midnight"])
def test_parse_quiet_hours_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="quiet hours must look like 08:00-20:00"):
        parse_quiet_hours(value)
