"""An archiver cycle costs O(homes it can archive): it walks only homes that could be
chosen, oldest first, and stops once ``max_per_cycle`` are confirmed idle.

Real SQLite and PostgreSQL (``state_url``), real folders, a ``file://`` repository. Walks
are counted by wrapping ``scan_home`` where the loop calls it: the wrapper records the
home and calls the real walk (counting, not changing behaviour). Database transactions
are counted with SQLAlchemy's ``begin`` event on the real engine.

The fake clock (2030) is years ahead of the files' change times, so every home is idle by
its files; the order among homes is set by the activity the database holds (as the Hub
would have reported it), one hour apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from hometier.lifecycle import loop
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.loop import NEXT_CYCLE, CycleReport, discover_homes, run_cycle
from hometier.lifecycle.policy import Policy
from hometier.repo import Repository
from hometier.state import ACTIVE, ARCHIVED, candidates, open_database, queries
from hometier.store import open_store

from .conftest import FakeClock

DAY = dt.timedelta(days=1)


def tiny_home(path: Path, size: int = 600) -> None:
    (path / "work").mkdir(parents=True)
    (path / "notes.txt").write_bytes(b"n" * size)
    (path / "work" / "run.py").write_text(f"print({path.name!r})\n")


def touch(home: Path, when: dt.datetime) -> None:
    """The owner writes a file: a new file stamped with ``when`` (the fake clock's time;
    writing alone stamps the real one, years behind it)."""
    new = home / "saved-just-now.txt"
    new.write_text("edited\n")
    os.utime(new, (when.timestamp(), when.timestamp()))


@pytest.fixture
def lc(state_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Lifecycle]:
    (tmp_path / "homes").mkdir()
    db = open_database(state_url)
    lifecycle = Lifecycle(
        db=db,
        repo=Repository.open_or_create(open_store(f"file://{tmp_path / 'repo'}"))[0],
        layout=HomeLayout(tmp_path / "homes"),
        policy=Policy(inactive_after=30 * DAY, max_per_cycle=5),
        clock=clock,
        quarantine_for=dt.timedelta(days=3),
        workers=1,
        pack_size=1024 * 1024,
    )
    try:
        yield lifecycle
    finally:
        db.dispose()


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every home the loop walks, in order (the real walk runs)."""
    seen: list[str] = []
    real = loop.scan_home

    def counting(path: str | os.PathLike[str], *a: object, **kw: object) -> object:
        seen.append(os.path.basename(path))
        return real(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "scan_home", counting)
    return seen


def make_homes(lc: Lifecycle, users: list[str], **kw: int) -> None:
    """Homes for ``users``, registered, idle by the database in the list's order (the
    first the least recently active)."""
    for user in users:
        tiny_home(lc.layout.path(user), **kw)
    discover_homes(lc)
    oldest = lc.now() - 60 * DAY
    seen = [(u, oldest + i * dt.timedelta(hours=1)) for i, u in enumerate(users)]
    assert candidates.record_activities(lc.db, seen, "hub") == len(users)


def archived(report: CycleReport) -> list[str]:
    return [r.user for r in report.results if r.outcome == "archived"]


def reasons(report: CycleReport) -> dict[str, str]:
    return {d.user: d.reason for d in report.decisions}


def test_a_cycle_walks_only_what_it_can_archive(
    lc: Lifecycle, clock: FakeClock, walks: list[str]
) -> None:
    users = [f"u{i:03d}" for i in range(200)]
    make_homes(lc, users)
    queries.acquire_lease(lc.db, "u000", "job-1", "a batch job", 10 * DAY, clock())
    queries.set_exempt(lc.db, "u002", True, "thesis", "admin", clock())
    for user in ("u001", "u003"):  # idle by the database, but their owners saved a file
        touch(lc.layout.path(user), clock() - DAY)

    report = run_cycle(lc)

    print(f"200 idle homes, max_per_cycle 5: walked {len(walks)}: {walks}")
    # The leased and exempt homes are never walked; the two found active do not use
    # the budget; the walking stops at the fifth confirmed idle home.
    assert walks == ["u001", "u003", "u004", "u005", "u006", "u007", "u008"]
    assert report.walked == len(walks) and report.errors == []
    assert archived(report) == ["u004", "u005", "u006", "u007", "u008"]
    why = reasons(report)
    assert len(report.decisions) == len(users) == len(why)
    assert why["u000"] == "1 active lease(s)" and why["u002"] == "exempt"
    assert why["u001"].startswith("active 1d ago (files)"), why["u001"]
    assert {why[u] for u in users[9:]} == {NEXT_CYCLE}
    assert [d.user for d in report.decisions if d.chosen] == archived(report)
    # What the walks found is recorded: the active homes now drop out by the database.
    assert queries.get_home(lc.db, "u001").last_activity_source == "files"
    assert queries.get_home(lc.db, "u009").last_activity_source == "hub"  # never walked
    for user in users:
        want = ARCHIVED if user in archived(report) else ACTIVE
        assert queries.get_home(lc.db, user).state == want, user


def test_walks_at_once_walk_and_decide_exactly_what_one_at_a_time_would(
    lc: Lifecycle, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``archive_concurrency`` 4, four homes are walked at once; a slow walk of the
    first candidate lets later ones finish first, and the cycle still walks the same
    homes (none past the fifth confirmed idle) and chooses them in the same order."""
    users = [f"u{i:03d}" for i in range(100)]
    make_homes(lc, users)
    for user in ("u001", "u003", "u004"):
        touch(lc.layout.path(user), clock() - DAY)
    lock = threading.Lock()
    walks: list[str] = []
    running = [0, 0]  # now, most at once
    real = loop.scan_home

    def slow(path: str | os.PathLike[str], *a: object, **kw: object) -> object:
        name = os.path.basename(path)
        with lock:
            walks.append(name)
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            time.sleep(0.3 if name == "u000" else 0.02)
            return real(path, *a, **kw)  # type: ignore[arg-type]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(loop, "scan_home", slow)
    wide = dataclasses.replace(lc, archive_concurrency=4)
    report = run_cycle(wide, dry_run=True)
    print(f"walks {walks}, at most {running[1]} at once")
    assert sorted(walks) == [f"u{i:03d}" for i in range(8)], walks
    assert running[1] > 1, "the walks ran one at a time"
    assert report.walked == 8
    assert [d.user for d in report.decisions if d.chosen] == [
        "u000",
        "u002",
        "u005",
        "u006",
        "u007",
    ]
    why = reasons(report)
    assert why["u001"].startswith("active 1d ago (files)"), why["u001"]
    assert {why[u] for u in users[8:]} == {NEXT_CYCLE}


def test_a_dry_run_costs_one_transaction_per_walked_home_at_most(
    lc: Lifecycle, walks: list[str]
) -> None:
    users = [f"u{i:03d}" for i in range(60)]
    make_homes(lc, users)
    began: list[int] = []
    listener = lambda conn: began.append(1)  # noqa: E731
    event.listen(lc.db.engine, "begin", listener)
    try:
        report = run_cycle(lc, dry_run=True)
    finally:
        event.remove(lc.db.engine, "begin", listener)
    print(f"dry run over 60 idle homes: {len(walks)} walks, {len(began)} transactions")
    assert [d.user for d in report.decisions if d.chosen] == users[:5]
    assert walks == users[:5]
    # discover_homes (1), the homes and their leases (1), one per walked home.
    assert len(began) <= len(walks) + 2, len(began)
    assert all(queries.get_home(lc.db, u).state == ACTIVE for u in users)


def test_cycles_drain_the_backlog_oldest_first_and_a_touched_home_stays(
    lc: Lifecycle, clock: FakeClock, walks: list[str]
) -> None:
    users = [f"u{i:02d}" for i in range(16)]
    make_homes(lc, users)

    first = run_cycle(lc)
    assert archived(first) == users[0:5] and walks == users[0:5]

    # The next in line is used between two cycles: it is walked once, found active, kept.
    touch(lc.layout.path("u05"), clock.advance(hours=1))
    walks.clear()
    second = run_cycle(lc)
    assert walks == users[5:11], walks
    assert archived(second) == users[6:11]
    assert reasons(second)["u05"].startswith("active 0m ago (files)"), reasons(second)["u05"]

    # From then on it is out of the candidates by the database alone: not walked again.
    drained = archived(first) + archived(second)
    for n in range(3, 8):
        walks.clear()
        report = run_cycle(lc)
        assert report.errors == [], report.errors
        assert "u05" not in walks
        assert walks == archived(report), (n, walks)  # nothing walked in vain
        assert len(walks) <= 5
        if not walks:
            break
        drained += archived(report)
    print(f"drained in {n - 1} cycles, then one with nothing to walk: {drained}")
    assert drained == [u for u in users if u != "u05"]  # oldest first, nobody starved
    assert queries.get_home(lc.db, "u05").state == ACTIVE

    # A steady cycle costs a few statements, not one per home in quarantine (15 here).
    began: list[int] = []
    listener = lambda conn: began.append(1)  # noqa: E731
    event.listen(lc.db.engine, "begin", listener)
    try:
        steady = run_cycle(lc)
    finally:
        event.remove(lc.db.engine, "begin", listener)
    print(f"a steady cycle with {len(drained)} homes in quarantine: {len(began)} transactions")
    assert steady.results == [] and steady.purged == [] and len(began) <= 6, len(began)

    # 31 days later its edit has aged: it goes too, and the quarantines now due are purged.
    clock.advance(days=31)
    walks.clear()
    last = run_cycle(lc)
    assert archived(last) == ["u05"] and walks == ["u05"]
    assert len(last.purged) == len(drained), last.purged


def test_homes_refused_for_their_size_do_not_use_the_budget(
    lc: Lifecycle, walks: list[str]
) -> None:
    lc.policy = Policy(inactive_after=30 * DAY, max_per_cycle=3, min_size=500, max_size=8000)
    users = [f"u{i}" for i in range(9)]
    make_homes(lc, users)
    for user in ("u0", "u1"):  # the oldest grew past max_size since they were measured
        (lc.layout.path(user) / "big.bin").write_bytes(b"b" * 9000)
    (lc.layout.path("u2") / "notes.txt").write_bytes(b"")  # shrank below min_size

    report = run_cycle(lc)

    why = reasons(report)
    assert (why["u0"], why["u1"]) == ("larger than max_size",) * 2
    assert why["u2"] == "smaller than min_size"
    assert archived(report) == ["u3", "u4", "u5"]
    assert walks == users[:6]
    assert {why[u] for u in users[6:]} == {NEXT_CYCLE}
    # The sizes the walks measured are recorded.
    assert queries.get_home(lc.db, "u0").hot_bytes > 8000
    assert queries.get_home(lc.db, "u2").hot_bytes < 500


def test_quiet_hours_walk_nothing(lc: Lifecycle, clock: FakeClock, walks: list[str]) -> None:
    make_homes(lc, [f"u{i}" for i in range(5)])
    hour = clock().time().replace(minute=0, second=0, microsecond=0)
    later = (clock() + dt.timedelta(hours=2)).time().replace(minute=0, second=0, microsecond=0)
    lc.policy = Policy(inactive_after=30 * DAY, quiet_hours=(hour, later))
    report = run_cycle(lc)
    assert walks == [] and report.results == []
    assert set(reasons(report).values()) == {"quiet hours"}
