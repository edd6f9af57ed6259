"""The clock jumps (NTP steps, a VM resumed, an operator's typo) between and during cycles.

Time is the ``FakeClock`` the Lifecycle reads; file times stay real (the homes' ctimes
are "now" on the wall clock, 2026 or so, years before the fake clock's 2030), which is
what a backwards jump meets: activity that looks like it is in the future.

- A jump back never archives anything early: activity "in the future" keeps the home,
  with a reason that says so.
- A jump forward archives what is idle by the new time and nothing else: homes with
  recent activity, exempt homes and homes with a lease still valid are kept.
- A jump forward in the middle of an archive lets another worker take the claim over
  (it looks abandoned); the first worker then backs off without touching the home.
- Activity stamped while the clock was wrong (far ahead) keeps pinning the home after
  the clock is corrected, until that time comes (documented, not a loss).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from hometier.lifecycle import cycle
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.loop import discover_homes, run_cycle
from hometier.lifecycle.policy import Policy
from hometier.lifecycle.restoring import restore_home
from hometier.state import ACTIVE, ARCHIVED, queries
from reliability.conftest import Site, manifest, only_notice

pytestmark = pytest.mark.s3

DAY = dt.timedelta(days=1)
IDLE_30 = Policy(inactive_after=30 * DAY)


def _archived(report: Any) -> list[str]:
    return sorted(r.user for r in report.results if r.outcome == "archived")


def _reasons(report: Any) -> dict[str, str]:
    return {d.user: d.reason for d in report.decisions}


def test_a_jump_back_archives_nothing_early(site: Site) -> None:
    t0 = site.clock.now
    for i, user in enumerate(("old", "recent", "fresh")):
        site.make_home(user, i + 1, big=64 * 1024)
    lc = site.lifecycle(policy=IDLE_30)
    discover_homes(lc)
    queries.record_activity(lc.db, "recent", t0 - 10 * DAY, "hub")

    report = run_cycle(lc)  # at t0: only "old" and "fresh" are idle (files from 2026)
    assert _archived(report) == ["fresh", "old"], _reasons(report)
    restore_home(lc, "fresh", "login")  # a login at t0: activity at t0

    # The clock jumps 20 days back: "recent" (t0-10d) and "fresh" (t0) are in the future.
    site.clock.set(t0 - 20 * DAY)
    report = run_cycle(lc)
    reasons = _reasons(report)
    print(f"20 days back: {reasons}")
    assert _archived(report) == []
    assert "future" in reasons["recent"] and "future" in reasons["fresh"]

    # Years back, before the files' own (real) times: everything is in the future.
    site.clock.set(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    site.make_home("newcomer", 9, big=64 * 1024)
    report = run_cycle(lc)
    assert _archived(report) == [], _reasons(report)
    assert "future" in _reasons(report)["newcomer"]

    # Time runs normally again from t0: "recent" goes when it is 30 days idle, not before.
    site.clock.set(t0 + 19 * DAY)
    assert "recent" not in _archived(run_cycle(lc))
    site.clock.set(t0 + 21 * DAY)
    assert "recent" in _archived(run_cycle(lc))
    assert queries.get_home(lc.db, "fresh").state == ACTIVE  # its login was at t0


def test_a_jump_forward_archives_only_what_is_idle_by_the_new_time(site: Site) -> None:
    t0 = site.clock.now
    users = ("idle", "busy", "leased", "exempt")
    for i, user in enumerate(users):
        site.make_home(user, i + 1, big=64 * 1024)
    lc = site.lifecycle(policy=IDLE_30)
    discover_homes(lc)
    queries.record_activity(lc.db, "busy", t0 - 1 * DAY, "hub")
    queries.acquire_lease(lc.db, "leased", "job-42", "a long job", 20 * DAY, t0)
    queries.set_exempt(lc.db, "exempt", True, "asked", "admin", t0)

    report = run_cycle(lc)
    assert _archived(report) == ["idle"]

    site.clock.advance(days=15)  # busy: 16 days idle; the lease runs until t0+20d
    report = run_cycle(lc)
    print(f"+15 days: {_reasons(report)}")
    assert _archived(report) == []

    site.clock.advance(days=16)  # t0+31d: busy idle 32 days, the lease has expired
    report = run_cycle(lc)
    print(f"+31 days: {_reasons(report)}")
    assert _archived(report) == ["busy", "leased"]
    assert queries.get_home(lc.db, "exempt").state == ACTIVE


def test_a_jump_forward_mid_archive_lets_another_worker_take_over_safely(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("alice", 1)
    want = manifest(home)
    first = site.lifecycle(worker="archiver:a:1")
    second = site.lifecycle(worker="archiver:b:2")
    real_backup = cycle.backup
    taken_over: list[str] = []
    leapt: list[bool] = []

    def backup(*a: Any, **kw: Any) -> Any:
        snap = real_backup(*a, **kw)
        if not leapt:
            leapt.append(True)
            # While the first worker holds the snapshot, the clock leaps past its claim.
            site.clock.advance(hours=1)
            taken_over.append(archive_home(second, "alice").outcome)
        return snap

    monkeypatch.setattr(cycle, "backup", backup)
    result = archive_home(first, "alice")
    monkeypatch.undo()

    print(f"second worker: {taken_over}; first worker: {result.outcome} ({result.reason})")
    assert taken_over == ["archived"]
    assert result.outcome in ("changed", "cancelled"), result
    row = queries.get_home(first.db, "alice")
    assert row.state == ARCHIVED and row.claimed_by is None
    assert only_notice(home)
    assert restore_home(site.lifecycle(), "alice", "login").outcome == "restored"
    assert manifest(home) == want


def test_activity_stamped_by_a_clock_far_ahead_pins_the_home_until_then(site: Site) -> None:
    """Documented behaviour, not a loss: ``last_activity`` never moves back, so a login
    recorded while the clock read 2035 keeps the home hot (reason "in the future") after
    the clock is corrected, until 2035 plus ``inactive_after``."""
    site.make_home("zoe", 1, big=64 * 1024)
    lc = site.lifecycle(policy=IDLE_30)
    discover_homes(lc)
    wrong = dt.datetime(2035, 6, 1, tzinfo=dt.UTC)
    queries.record_activity(lc.db, "zoe", wrong, "hub")
    site.clock.advance(days=365)  # corrected, and a year later
    report = run_cycle(lc)
    reason = _reasons(report)["zoe"]
    print(f"a year after the correction: {reason}")
    assert _archived(report) == [] and "future" in reason
    site.clock.set(wrong + 31 * DAY)
    assert _archived(run_cycle(lc)) == ["zoe"]
