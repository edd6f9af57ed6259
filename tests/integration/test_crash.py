"""Crash safety of the archive cycle and of restores, on real SeaweedFS (and PostgreSQL).

DESIGN.md, "Lifecycle of a home": every step is idempotent and resumable; a crash
(kill -9) at any point leaves either the old state or the new one, never a home without
a copy. Each test builds a homes folder, records a manifest of every home (path, type,
mode, size, mtime_ns, sha256, symlink target), runs the real ``hometier`` command in a
subprocess and kills it (``HOMETIER_FAULTS=<point>:kill`` SIGKILLs it at a named step of
the cycle; a restore is killed from outside), then proves with no fault:

1. nothing is lost: every home is either complete on disk (manifest-equal) or the
   database says ``archived`` and its latest snapshot restores manifest-equal from the
   bucket (``hometier restore USER --target``);
2. the next cycle (``hometier serve --once``) finishes the job: every home archived;
3. every home then restores (``hometier restore USER``) manifest-equal, with no staging
   folder left, and ``hometier check --read-data`` passes.

Also: the restarted archiver finishes a dead one's work in its first cycle; a login
right after a crash past the database step gets the home back exactly (no duplicate in
a conflicts folder); a second crash during the recovery of the first is recovered too.

The same with the S3 server stopped in the middle of an archive: the archiver gives up
with an error after its retries (it does not hang), the home is intact and ``active``,
and once S3 is back the archive succeeds. A restore killed half-way leaves the home
``restoring`` (never ``active``); the next restore takes it over and completes it.

Homes are small (one large random file each, so several chunks) and ``pack_size_mb = 1``
so that a backup writes several packs and ``after_pack`` fires early.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.servers import S3Server
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.store import open_store
from integration.crashutil import (
    KILLED,
    Hometier,
    Manifest,
    MiB,
    diff,
    make_home,
    manifest,
    quarantined,
    set_home_times,
    staging_leftovers,
)

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol")
VICTIM = "bob"  # the home `hometier archive` is killed on

POINTS = (
    "mid_snapshot",  # after a file was read
    "after_pack",  # after a pack upload
    "after_index",  # after an index object
    "after_snapshot",  # snapshot durable, database not told
    "after_state_change",  # archiving -> archived committed, nothing moved yet
    "mid_delete",  # the stand-in made and the move recorded, the home not swapped yet
    "after_swap",  # the stand-in in the home's place, the home in the quarantine
)
BOTH_DBS = ("after_state_change", "mid_delete", "after_swap")
CASES = [pytest.param(p, "sqlite", id=f"{p}-sqlite") for p in POINTS] + [
    pytest.param(p, "postgres", id=f"{p}-postgres", marks=pytest.mark.postgres) for p in BOTH_DBS
]

# Longer than any claim the archiver takes (Lifecycle.claim_for: 5 min, not configurable).
CLAIM_EXPIRED = dt.timedelta(hours=2)

SETTINGS = {
    "Hometier.pack_size_mb": 1,
    "Hometier.workers": 2,
    "Archiver.inactive_after": "0s",
}


def _db_url(db: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if db == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path}/state.db"


def _setup(
    tmp_path: Path,
    store: str,
    db_url: str,
    users: tuple[str, ...] = USERS,
    *,
    big: int = 6 * MiB,
    bigs: int = 1,
    settings: dict[str, object] | None = None,
) -> tuple[Hometier, dict[str, Manifest]]:
    ht = Hometier(tmp_path / "site", store, db_url, {**SETTINGS, **(settings or {})})
    for seed, user in enumerate(users, 1):
        make_home(ht.home(user), seed, big=big, bigs=bigs)
    return ht, {user: manifest(ht.home(user)) for user in users}


def _only_notice(home: Path) -> bool:
    return sorted(os.listdir(home)) == [NOTICE_NAME]


def assert_nothing_lost(ht: Hometier, want: dict[str, Manifest], scratch: Path) -> dict[str, str]:
    """Every home is complete on disk, or archived and restorable from the bucket.

    An ``archived`` home is always checked against the bucket (a plain restore of its
    latest snapshot into a scratch folder), even if its files are still on disk too.
    Returns the states.
    """
    states = ht.states()
    for user, expected in want.items():
        state = states.get(user, "active")  # never seen by hometier: plain files
        home = ht.home(user)
        got = manifest(home) if home.is_dir() else {}
        if state == "archived":
            target = scratch / user
            r = ht.cli("restore", user, "--target", str(target))
            assert r.code == 0, f"{user} is archived but its snapshot does not restore: {r}"
            assert manifest(target) == expected, (
                f"{user} is archived but its snapshot differs: {diff(expected, manifest(target))}"
            )
        else:
            assert got == expected, (
                f"{user} is {state} but its home is not complete on disk: {diff(expected, got)}"
            )
    return states


def assert_all_archived(ht: Hometier, users: tuple[str, ...] = USERS) -> None:
    states = ht.states()
    assert states == dict.fromkeys(users, "archived"), states
    for user in users:
        home = ht.home(user)
        assert _only_notice(home), f"{user}: {sorted(os.listdir(home))}"


def assert_restores(ht: Hometier, want: dict[str, Manifest]) -> None:
    """``hometier restore USER`` brings every home back manifest-equal, active, tidy."""
    for user, expected in want.items():
        r = ht.cli("restore", user, "--json")
        assert r.code == 0, str(r)
        got = manifest(ht.home(user))
        assert got == expected, f"{user}: {diff(expected, got)}"
    assert ht.states() == dict.fromkeys(want, "active")
    assert staging_leftovers(ht.homes) == []
    left = quarantined(ht.homes)
    assert left == [], f"restored homes left files in the quarantine: {left}"


def assert_check_passes(ht: Hometier) -> None:
    r = ht.cli("check", "--read-data", "--json")
    assert r.code == 0, str(r)
    assert r.json["ok"] is True and r.json["errors"] == [], r.json


# --- kill -9 at every step of the archive cycle ----------------------------------------


@pytest.mark.parametrize(("point", "db"), CASES)
def test_kill_at_each_step_loses_nothing_and_next_cycle_finishes(
    point: str, db: str, request: pytest.FixtureRequest, tmp_path: Path, s3_url: str
) -> None:
    db_url = _db_url(db, request, tmp_path)
    ht, want = _setup(tmp_path, s3_url, db_url)

    r = ht.run("archive", VICTIM, faults=f"{point}:kill")
    assert r.code == KILLED, f"expected a SIGKILL at {point}: {r}"

    # 1. Right after the crash: every file is on disk or in a restorable snapshot.
    states = assert_nothing_lost(ht, want, tmp_path / "after-crash")
    before_db_step = POINTS.index(point) < POINTS.index("after_state_change")
    assert states[VICTIM] == ("archiving" if before_db_step else "archived"), states

    # 2. The restarted archiver finishes the job. A dead process's claim on the home
    # runs out only after Lifecycle.claim_for (5 min, not configurable) unless recover()
    # recognises its dead predecessor: time passing is simulated here by moving the
    # claim into the past, so that this test does not depend on that recognition;
    # test_restarted_archiver_finishes_the_job_in_its_first_cycle covers it.
    set_home_times(db_url, "archiving", claimed_until=CLAIM_EXPIRED)
    r = ht.cli("serve", "--once", "--json")
    assert r.code == 0, str(r)
    # recover() resets the abandoned claim, or finishes the interrupted move.
    assert r.json["recovered"] == [VICTIM], r.json["recovered"]
    assert_all_archived(ht)
    assert_nothing_lost(ht, want, tmp_path / "after-cycle")

    # 3. Every home comes back byte-identical, and the repository is sound.
    assert_restores(ht, want)
    assert_check_passes(ht)


def test_crash_while_recovering_a_crash(tmp_path: Path, s3_url: str) -> None:
    """Killed in the middle of moving a home aside, then killed again in the middle of
    the recovery that finishes that move (mid_delete fires there too): still nothing
    lost, and the third run finishes."""
    ht, want = _setup(tmp_path, s3_url, f"sqlite:///{tmp_path}/state.db")
    r = ht.run("archive", VICTIM, faults="mid_delete:kill")
    assert r.code == KILLED, str(r)
    r = ht.run("serve", "--once", faults="mid_delete:kill")
    assert r.code == KILLED, f"the recovery did not reach mid_delete: {r}"
    # Killed in recover(), before the cycle even registered the other homes.
    assert ht.states() == {VICTIM: "archived"}
    assert len(quarantined(ht.homes)) == 1  # the victim's stand-in, prepared again
    assert_nothing_lost(ht, want, tmp_path / "after-second-crash")

    r = ht.cli("serve", "--once", "--json")
    assert r.code == 0, str(r)
    assert r.json["recovered"] == [VICTIM], r.json["recovered"]
    assert_all_archived(ht)
    assert_restores(ht, want)


def test_restarted_archiver_finishes_the_job_in_its_first_cycle(
    tmp_path: Path, s3_url: str
) -> None:
    """The archiver restarted after a kill -9 finishes the dead one's work in its first
    cycle, instead of leaving the home ``archiving`` until the dead claim runs out."""
    db_url = f"sqlite:///{tmp_path}/state.db"
    ht, want = _setup(tmp_path, s3_url, db_url)
    r = ht.run("serve", "--once", faults="after_snapshot:kill")
    assert r.code == KILLED, str(r)
    states = assert_nothing_lost(ht, want, tmp_path / "after-crash")
    stuck = [u for u, s in states.items() if s == "archiving"]
    assert len(stuck) == 1, states

    r = ht.cli("serve", "--once", "--json")  # the restart, a moment later
    assert r.code == 0, str(r)
    assert_nothing_lost(ht, want, tmp_path / "after-restart")
    states = ht.states()
    assert states == dict.fromkeys(USERS, "archived"), (
        f"the first cycle after the restart left {stuck[0]} {states[stuck[0]]} (claimed by "
        f"the dead process until its claim runs out): {states}"
    )


@pytest.mark.parametrize("point", BOTH_DBS)
def test_login_right_after_crash_gets_the_home_back_as_it_was(
    point: str, tmp_path: Path, s3_url: str
) -> None:
    """A crash after the database step, then a login before any archiver cycle ran:
    the restore must give the home back exactly, not a copy beside the files."""
    ht, want = _setup(tmp_path, s3_url, f"sqlite:///{tmp_path}/state.db")
    r = ht.run("archive", VICTIM, faults=f"{point}:kill")
    assert r.code == KILLED, str(r)
    assert ht.states()[VICTIM] == "archived"

    r = ht.run("restore", VICTIM, "--json", timeout=60)
    assert r.code == 0, str(r)
    got = manifest(ht.home(VICTIM))
    assert got == want[VICTIM], f"{VICTIM}: {diff(want[VICTIM], got)}; restore said {r.out}"
    assert ht.states()[VICTIM] == "active"
    assert_nothing_lost(ht, want, tmp_path / "after-login")


# --- the S3 server goes away in the middle of an archive ---------------------------------


def test_s3_stopped_mid_archive(tmp_path: Path, s3_server: S3Server, s3_url: str) -> None:
    user = "dave"
    ht, want = _setup(
        tmp_path, s3_url, f"sqlite:///{tmp_path}/state.db", (user,), big=12 * MiB, bigs=5
    )
    store = open_store(s3_url)
    proc = ht.start("archive", user)
    try:
        deadline = time.monotonic() + 60
        while not any(True for _ in store.list("packs/")):
            assert proc.poll() is None, f"the archive ended before any pack: {proc.communicate()}"
            assert time.monotonic() < deadline, "no pack was written within 60 s"
            time.sleep(0.02)
        s3_server.stop_s3()
        stopped = time.monotonic()
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the archiver hung for 120 s after S3 went away")
        gave_up_after = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        s3_server.start_s3()
    print(f"archiver exited {proc.returncode} {gave_up_after:.1f}s after S3 stopped: {err}")
    assert proc.returncode not in (0, KILLED), f"exit {proc.returncode}\n{out}\n{err}"
    assert gave_up_after < 90, gave_up_after
    got = manifest(ht.home(user))
    assert got == want[user], diff(want[user], got)
    assert ht.states() == {user: "active"}

    r = ht.cli("archive", user, "--json")
    assert r.code == 0, str(r)
    assert r.json["outcome"] == "archived", r.json
    assert_all_archived(ht, (user,))
    assert_restores(ht, want)
    assert_check_passes(ht)


# --- kill -9 during a restore -------------------------------------------------------------


def test_kill_during_restore_then_restore_again(tmp_path: Path, s3_url: str) -> None:
    user = "erin"
    ht, want = _setup(
        tmp_path,
        s3_url,
        f"sqlite:///{tmp_path}/state.db",
        (user,),
        big=10 * MiB,
        bigs=6,
        # No quarantine: the restore has to come from the bucket, through a staging folder.
        settings={"Archiver.quarantine_for": "0s"},
    )
    r = ht.cli("serve", "--once", "--json")
    assert r.code == 0, str(r)
    assert_all_archived(ht, (user,))
    assert quarantined(ht.homes) == []

    home = ht.home(user)
    proc = ht.start("restore", user)
    deadline = time.monotonic() + 60
    building = ht.homes / ".hometier-quarantine"  # a restore is built there, then swapped in
    while not list(building.glob(".hometier-restore-*/*")):
        assert proc.poll() is None, f"the restore ended before it was killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no staging folder appeared within 60 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # files are being created or written: mid-restore
    out, err = proc.communicate()
    assert proc.returncode == KILLED, f"the restore finished before the kill: {out} {err}"

    assert staging_leftovers(ht.homes), "the kill came after the restore was complete"
    # A half-restored home is never reported active.
    assert ht.states() == {user: "restoring"}

    r = ht.run("restore", user, "--json", timeout=90)
    assert r.code == 0, str(r)
    print(f"the restore after the killed one took {r.seconds:.1f}s: {r.out}")
    got = manifest(home)
    assert got == want[user], diff(want[user], got)
    assert ht.states() == {user: "active"}
    assert staging_leftovers(ht.homes) == []
    assert_check_passes(ht)
