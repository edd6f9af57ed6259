"""The archive cycle and restore on a real bucket and database (SQLite and PostgreSQL).

Each test builds homes under ``tmp_path/homes``, archives them through the lifecycle and
compares trees with ``manifest`` (path, type, mode, owner, size, mtime_ns, sha256, link
target). Races are staged by wrapping the real functions at the step between which the
race happens; time moves by the fake clock, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hometier import faults
from hometier.engine import archive as engine_archive
from hometier.lifecycle import cycle, install, moves
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import NotEligible, archive_home, purge_quarantine, recover
from hometier.lifecycle.loop import run_cycle
from hometier.lifecycle.policy import Policy
from hometier.lifecycle.restoring import RestoreFailed, restore_home
from hometier.repo import Repository
from hometier.repo.ids import pack_key
from hometier.state import ACTIVE, ARCHIVED, ARCHIVING, FAILED, queries
from hometier.store import open_store

from .conftest import FakeClock, manifest

pytestmark = pytest.mark.s3


def transitions(lc: Lifecycle, user: str) -> list[tuple[str | None, str | None]]:
    return [(e.from_state, e.to_state) for e in queries.events(lc.db, user, kind="state")]


def quarantine_of(lc: Lifecycle, user: str) -> Path:
    path = queries.get_home(lc.db, user).quarantine_path
    assert path is not None
    return Path(path)


def quarantined(lc: Lifecycle) -> list[str]:
    """Quarantine folders of homes (not the lock folder)."""
    root = lc.quarantine_root
    return sorted(p for p in os.listdir(root) if not p.startswith(".")) if root.is_dir() else []


def only_notice(home: Path) -> bool:
    return sorted(os.listdir(home)) == [NOTICE_NAME]


# --- archive and restore -----------------------------------------------------------------


def test_archive_moves_the_files_aside_and_restore_brings_them_back(
    lifecycle: Lifecycle, make_home: Any
) -> None:
    home = make_home("alice")
    before = manifest(home)

    result = archive_home(lifecycle, "alice")

    assert (result.outcome, result.reason) == ("archived", "")
    assert result.snapshot is not None and result.bytes > 0
    assert home.is_dir() and only_notice(home)
    assert "come back automatically" in (home / NOTICE_NAME).read_text()
    row = queries.get_home(lifecycle.db, "alice")
    assert row.state == ARCHIVED and row.archived_at == lifecycle.now()
    quarantine = quarantine_of(lifecycle, "alice")
    assert quarantine.parent == lifecycle.quarantine_root
    assert manifest(quarantine) == before
    assert [s.id for s in queries.list_snapshots(lifecycle.db, "alice")] == [result.snapshot]
    assert [s.id for s in lifecycle.repo.list_snapshots("alice")] == [result.snapshot]
    assert transitions(lifecycle, "alice") == [
        (None, ACTIVE),
        (ACTIVE, ARCHIVING),
        (ARCHIVING, ARCHIVED),
    ]

    restored = restore_home(lifecycle, "alice", "login:alice")

    assert (restored.outcome, restored.source) == ("restored", "quarantine")
    assert restored.snapshot == result.snapshot and restored.conflicts == []
    assert manifest(home) == before
    assert not quarantine.exists()
    row = queries.get_home(lifecycle.db, "alice")
    assert (row.state, row.quarantine_path, row.error) == (ACTIVE, None, None)
    assert transitions(lifecycle, "alice")[-2:] == [(ARCHIVED, "restoring"), ("restoring", ACTIVE)]
    # Idempotent: a second login finds the files there.
    assert restore_home(lifecycle, "alice", "login:alice").outcome != "restored"
    assert manifest(home) == before


def test_restore_from_the_bucket_is_identical(lifecycle: Lifecycle, make_home: Any) -> None:
    home = make_home("bob")
    before = manifest(home)
    assert archive_home(lifecycle, "bob").outcome == "archived"
    quarantine = quarantine_of(lifecycle, "bob")
    lifecycle.restore_from_quarantine = False

    result = restore_home(lifecycle, "bob", "login:bob")

    assert (result.outcome, result.source, result.conflicts) == ("restored", "bucket", [])
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "bob").state == ACTIVE
    assert manifest(quarantine) == before  # not used, left for the purge


def test_second_archive_is_incremental_and_restores_the_newest(
    lifecycle: Lifecycle, make_home: Any
) -> None:
    home = make_home("carol")
    first = archive_home(lifecycle, "carol")
    restore_home(lifecycle, "carol", "login")
    (home / "notes.txt").write_text("edited after the first archive\n")
    (home / "project" / "new.txt").write_text("new\n")
    before = manifest(home)
    lifecycle.restore_from_quarantine = False

    second = archive_home(lifecycle, "carol")

    assert second.outcome == "archived"
    assert second.stored_bytes < first.stored_bytes
    assert lifecycle.repo.find_snapshot(second.snapshot or "", "carol").parent == first.snapshot
    assert restore_home(lifecycle, "carol", "login").source == "bucket"
    assert manifest(home) == before


# --- changes and logins while archiving ---------------------------------------------------


def test_a_home_modified_during_its_snapshot_is_kept(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("dave")
    real = engine_archive.iter_chunks
    touched: list[str] = []

    def chunks_then_write(fd: int, length: int, chunking: Any, offset: int = 0) -> Any:
        name = os.readlink(f"/proc/self/fd/{fd}")
        for i, chunk in enumerate(real(fd, length, chunking, offset)):
            yield chunk
            if i == 0 and name.endswith("/data.bin") and not touched:
                touched.append(name)
                with open(name, "ab") as f:  # the user saves while it is read
                    f.write(b"more")

    monkeypatch.setattr(engine_archive, "iter_chunks", chunks_then_write)

    result = archive_home(lifecycle, "dave")

    assert touched
    assert result.outcome == "changed"
    assert any("data.bin" in d for d in result.details)
    assert queries.get_home(lifecycle.db, "dave").state == ACTIVE
    assert (home / "data.bin").read_bytes().endswith(b"more")
    assert NOTICE_NAME not in os.listdir(home)
    assert quarantined(lifecycle) == []
    assert transitions(lifecycle, "dave")[-1] == (ARCHIVING, ACTIVE)


@pytest.mark.parametrize("change", ["new top-level file", "edited nested file"])
def test_a_change_between_snapshot_and_move_puts_everything_back(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    home = make_home("erin")
    real = queries.finish_archive

    def change_then_finish(*args: Any, **kwargs: Any) -> bool:
        if change == "new top-level file":
            (home / "zz-late.txt").write_text("written after the snapshot\n")
        else:
            with open(home / "project" / "src" / "main.py", "a") as f:
                f.write("# edited after the snapshot\n")
        expected.update(manifest(home))
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "finish_archive", change_then_finish)
    expected: dict[str, Any] = {}

    result = archive_home(lifecycle, "erin")

    assert expected and manifest(home) == expected  # nothing lost, nothing left behind
    if change == "new top-level file":
        assert (home / "zz-late.txt").read_text() == "written after the snapshot\n"
    else:
        assert (home / "project/src/main.py").read_text().endswith("after the snapshot\n")
    row = queries.get_home(lifecycle.db, "erin")
    assert (row.state, row.quarantine_path) == (ACTIVE, None)
    assert quarantined(lifecycle) == []
    assert transitions(lifecycle, "erin")[-2:] == [(ARCHIVING, ARCHIVED), (ARCHIVED, ACTIVE)]
    # The caller (CLI, loop report) must not be told the home was archived.
    assert result.outcome == "changed", result


def test_a_login_during_archiving_cancels_the_deletion(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("frank")
    before = manifest(home)
    real = cycle.backup
    answers: list[Any] = []

    def backup_then_login(*args: Any, **kwargs: Any) -> Any:
        snap = real(*args, **kwargs)
        answers.append(queries.request_restore(lifecycle.db, "frank", "login", lifecycle.now()))
        return snap

    monkeypatch.setattr(cycle, "backup", backup_then_login)

    result = archive_home(lifecycle, "frank")

    assert answers == [None]  # nothing to restore: the files are still there
    assert result.outcome == "cancelled"
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "frank").state == ACTIVE
    assert quarantined(lifecycle) == []
    assert transitions(lifecycle, "frank")[-1] == (ARCHIVING, ACTIVE)
    # The snapshot is durable and recorded even though the home stays.
    assert len(queries.list_snapshots(lifecycle.db, "frank")) == 1


def test_a_lease_blocks_archiving(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("gina")
    before = manifest(home)
    queries.get_or_create_home(lifecycle.db, "gina", str(home), clock())
    lease = queries.acquire_lease(
        lifecycle.db, "gina", "job-1", "batch", dt.timedelta(days=60), clock()
    )

    with pytest.raises(NotEligible, match="1 active lease"):
        archive_home(lifecycle, "gina")

    lifecycle.policy = Policy(inactive_after=dt.timedelta(days=30))
    clock.advance(days=40)
    report = run_cycle(lifecycle)
    [decision] = [d for d in report.decisions if d.user == "gina"]
    assert not decision.chosen and "lease" in decision.reason
    assert report.results == []
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "gina").state == ACTIVE

    # A lease taken while the snapshot is written cancels the archive at the DB step.
    queries.release_lease(lifecycle.db, lease.id, clock())
    real = cycle.backup

    def backup_then_lease(*args: Any, **kwargs: Any) -> Any:
        snap = real(*args, **kwargs)
        queries.acquire_lease(lifecycle.db, "gina", "job-2", "", dt.timedelta(hours=1), clock())
        return snap

    monkeypatch.setattr(cycle, "backup", backup_then_lease)
    assert archive_home(lifecycle, "gina").outcome == "cancelled"
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "gina").state == ACTIVE


def test_an_exempt_home_is_never_archived(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock
) -> None:
    home = make_home("hank")
    before = manifest(home)
    queries.get_or_create_home(lifecycle.db, "hank", str(home), clock())
    queries.set_exempt(lifecycle.db, "hank", True, "thesis", "admin", clock())

    with pytest.raises(NotEligible, match="exempt"):
        archive_home(lifecycle, "hank")

    lifecycle.policy = Policy(inactive_after=dt.timedelta(days=30))
    clock.advance(days=400)
    report = run_cycle(lifecycle)
    assert [(d.chosen, d.reason) for d in report.decisions] == [(False, "exempt")]
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "hank").state == ACTIVE


def test_run_cycle_archives_idle_homes_only(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock
) -> None:
    lifecycle.policy = Policy(inactive_after=dt.timedelta(days=30))
    idle = make_home("ivan")
    busy = make_home("judy")
    busy_before = manifest(busy)
    idle_before = manifest(idle)
    clock.set(dt.datetime.now(dt.UTC))

    first = run_cycle(lifecycle)  # everything was changed just now (ctime)
    assert first.results == []
    assert sorted(d.user for d in first.decisions if not d.chosen) == ["ivan", "judy"]

    # 40 days later: judy saved a file yesterday (mtime), ivan did nothing. The ctimes of
    # both are 40 days old: ctime cannot be set, so the clock moves instead.
    now = clock.advance(days=40)
    yesterday = (now - dt.timedelta(days=1)).timestamp()
    os.utime(busy / "notes.txt", (yesterday, yesterday))
    busy_before = manifest(busy)

    report = run_cycle(lifecycle)

    chosen = {d.user: d for d in report.decisions}
    assert chosen["ivan"].chosen and chosen["ivan"].reason.startswith("idle for 40d")
    assert not chosen["judy"].chosen and chosen["judy"].reason.startswith("active 1d ago")
    assert [(r.user, r.outcome) for r in report.results] == [("ivan", "archived")]
    assert report.errors == [] and report.purged == []
    assert queries.get_home(lifecycle.db, "ivan").state == ARCHIVED
    assert only_notice(idle) and manifest(quarantine_of(lifecycle, "ivan")) == idle_before
    assert queries.get_home(lifecycle.db, "judy").state == ACTIVE
    assert manifest(busy) == busy_before

    # The next cycle leaves the archived home alone (the notice file is no activity).
    again = run_cycle(lifecycle)
    assert again.results == []
    assert {d.user: d.reason for d in again.decisions}["ivan"] == "state is archived"
    assert restore_home(lifecycle, "ivan", "login").source == "quarantine"
    assert manifest(idle) == idle_before


def test_a_login_right_after_the_db_step_waits_for_the_move_and_gets_everything(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("lena")
    before = manifest(home)
    real = queries.finish_archive
    logins: list[threading.Thread] = []
    results: list[Any] = []

    def finish_then_login(*args: Any, **kwargs: Any) -> bool:
        done = real(*args, **kwargs)
        # The login arrives while the archiver holds the home's lock to move the files.
        t = threading.Thread(
            target=lambda: results.append(restore_home(lifecycle, "lena", "login:lena"))
        )
        t.start()
        logins.append(t)
        return done

    monkeypatch.setattr(queries, "finish_archive", finish_then_login)

    assert archive_home(lifecycle, "lena").outcome == "archived"
    logins[0].join(60)

    assert [(r.outcome, r.source) for r in results] == [("restored", "quarantine")]
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "lena").state == ACTIVE


# --- crashes and housekeeping -------------------------------------------------------------


def test_recover_finishes_a_move_interrupted_before_the_swap(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("kate")
    before = manifest(home)
    monkeypatch.setenv("HOMETIER_FAULTS", "mid_delete:raise")

    with pytest.raises(faults.FaultInjected):
        archive_home(lifecycle, "kate")

    monkeypatch.delenv("HOMETIER_FAULTS")
    quarantine = quarantine_of(lifecycle, "kate")
    assert queries.get_home(lifecycle.db, "kate").state == ARCHIVED
    assert manifest(home) == before and not quarantine.exists()  # not swapped yet
    assert quarantine.with_name(quarantine.name + ".fresh").is_dir()  # the stand-in

    assert recover(lifecycle) == ["kate"]

    assert only_notice(home)
    assert manifest(quarantine) == before
    assert recover(lifecycle) == []  # idempotent
    assert restore_home(lifecycle, "kate", "login").source == "quarantine"
    assert manifest(home) == before


def test_recover_gives_back_a_home_whose_archiver_died_before_the_db_step(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock
) -> None:
    home = make_home("liam")
    before = manifest(home)
    queries.get_or_create_home(lifecycle.db, "liam", str(home), clock())
    [claimed] = queries.begin_archive_claim(
        lifecycle.db, "archiver:gone:1", clock(), candidates=["liam"], claim_for=lifecycle.claim_for
    )
    assert claimed.state == ARCHIVING
    assert recover(lifecycle) == []  # the claim still runs
    clock.advance(hours=2)

    assert recover(lifecycle) == ["liam"]

    assert queries.get_home(lifecycle.db, "liam").state == ACTIVE
    assert manifest(home) == before
    assert archive_home(lifecycle, "liam").outcome == "archived"


def test_purge_removes_only_expired_quarantines(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock
) -> None:
    old_home, new_home = make_home("mia"), make_home("noah")
    old_before, new_before = manifest(old_home), manifest(new_home)
    assert archive_home(lifecycle, "mia").outcome == "archived"
    clock.advance(days=2)
    assert archive_home(lifecycle, "noah").outcome == "archived"
    old_q, new_q = quarantine_of(lifecycle, "mia"), quarantine_of(lifecycle, "noah")

    assert purge_quarantine(lifecycle) == []  # 2 days < quarantine_for (3 days)
    clock.advance(days=1, hours=1)

    assert purge_quarantine(lifecycle) == [old_q.name]

    assert not old_q.exists() and manifest(new_q) == new_before
    assert only_notice(old_home) and only_notice(new_home)
    mia = restore_home(lifecycle, "mia", "login")
    noah = restore_home(lifecycle, "noah", "login")
    assert (mia.source, noah.source) == ("bucket", "quarantine")
    assert manifest(old_home) == old_before and manifest(new_home) == new_before

    # quarantine_for=0: removed by the next purge.
    assert archive_home(lifecycle, "noah").outcome == "archived"
    lifecycle.quarantine_for = dt.timedelta(0)
    name = quarantine_of(lifecycle, "noah").name
    assert purge_quarantine(lifecycle) == [name]
    assert queries.get_home(lifecycle.db, "noah").quarantine_path is None  # purged: forgotten
    assert restore_home(lifecycle, "noah", "login").source == "bucket"
    assert manifest(new_home) == new_before


def test_a_purge_during_a_restore_from_the_quarantine_does_not_pull_the_files_away(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archiver's purge (end of its cycle) and a login (the service) run at once on a
    home whose quarantine just expired."""
    home = make_home("tara")
    before = manifest(home)
    assert archive_home(lifecycle, "tara").outcome == "archived"
    clock.advance(days=3, minutes=1)
    real = moves.rename_noreplace
    purged: list[list[str]] = []
    purger: list[threading.Thread] = []

    def rename_and_purge(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        if not purger:
            # The archiver's purge starts after the first file moved back. A purge that
            # waits for the home's lock finishes after the restore; one that does not
            # wait has done its work within the second.
            t = threading.Thread(target=lambda: purged.append(purge_quarantine(lifecycle)))
            t.start()
            purger.append(t)
            t.join(1.0)

    monkeypatch.setattr(moves, "rename_noreplace", rename_and_purge)

    try:
        result = restore_home(lifecycle, "tara", "login:tara")
    finally:
        purger[0].join(30)

    assert purged == [[]], "the purge removed a quarantine a restore was moving back"
    assert (result.outcome, result.source) == ("restored", "quarantine")
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "tara").state == ACTIVE


# --- restores ------------------------------------------------------------------------------


@pytest.mark.parametrize("from_quarantine", [True, False], ids=["quarantine", "bucket"])
def test_restore_keeps_files_that_appeared_meanwhile_and_reports_conflicts(
    lifecycle: Lifecycle, make_home: Any, from_quarantine: bool
) -> None:
    home = make_home("olga")
    before = manifest(home)
    assert archive_home(lifecycle, "olga").outcome == "archived"
    lifecycle.restore_from_quarantine = from_quarantine
    # Something wrote into the empty home while it was archived.
    (home / "fresh.txt").write_text("new, not in the snapshot\n")
    (home / "notes.txt").write_text("a new notes.txt, not the archived one\n")

    result = restore_home(lifecycle, "olga", "login")

    assert result.outcome == "restored"
    assert (home / "fresh.txt").read_text() == "new, not in the snapshot\n"
    assert (home / "notes.txt").read_text() == "a new notes.txt, not the archived one\n"
    assert result.conflicts == ["notes.txt"], result.conflicts
    assert result.conflicts_dir is not None
    conflicts = Path(result.conflicts_dir)
    assert conflicts.parent == home
    assert manifest(conflicts) == {"notes.txt": before["notes.txt"]}
    after = manifest(home)
    for rel, entry in before.items():
        if rel != "notes.txt":
            assert after[rel] == entry, rel
    assert queries.get_home(lifecycle.db, "olga").state == ACTIVE


def test_a_concurrent_restore_is_joined(
    lifecycle: Lifecycle, make_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home("pete")
    before = manifest(home)
    assert archive_home(lifecycle, "pete").outcome == "archived"
    lifecycle.restore_from_quarantine = False
    real = install.restore
    both_asked = threading.Event()

    def slow_restore(*args: Any, **kwargs: Any) -> Any:
        both_asked.wait(10)  # the other login arrives while this one restores
        return real(*args, **kwargs)

    monkeypatch.setattr(install, "restore", slow_restore)
    real_request = queries.request_restore
    asked = []

    def counting_request(*args: Any, **kwargs: Any) -> bool:
        answer = real_request(*args, **kwargs)
        asked.append(answer)
        if len(asked) == 2:
            both_asked.set()
        return answer

    monkeypatch.setattr(queries, "request_restore", counting_request)
    results: list[Any] = []
    errors: list[BaseException] = []

    def login(actor: str) -> None:
        try:
            results.append(restore_home(lifecycle, "pete", actor))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=login, args=(f"login:{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted(a is not None for a in asked) == [False, True]
    assert sorted(r.outcome for r in results) == ["joined", "restored"]
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "pete").state == ACTIVE
    assert transitions(lifecycle, "pete").count((ARCHIVED, "restoring")) == 1


# --- a damaged repository ----------------------------------------------------------------


def _reopen(lc: Lifecycle) -> Lifecycle:
    """The same lifecycle with a fresh repository object (no cached index or trees), as
    the process serving a login would have."""
    store = open_store(lc.repo.store.url)
    return Lifecycle(
        db=lc.db,
        repo=Repository.open(store),
        layout=lc.layout,
        clock=lc.clock,
        quarantine_for=lc.quarantine_for,
        restore_from_quarantine=lc.restore_from_quarantine,
        workers=lc.workers,
    )


def _take_packs(lc: Lifecycle) -> dict[str, bytes]:
    packs = {o.key: lc.repo.store.get(o.key) for o in lc.repo.store.list("packs/")}
    assert packs
    for key in packs:
        lc.repo.store.delete(key)
    return packs


def _corrupt_a_data_blob(lc: Lifecycle, snapshot: str, user: str) -> None:
    """Flip bytes of one file's content in its pack, leaving the trees readable."""
    snap = lc.repo.find_snapshot(snapshot, user)
    lc.repo.load_index()
    [node] = [n for n in lc.repo.load_tree(snap.tree) if n.name == b"data.bin"]
    loc = lc.repo.locate(node.content[0])
    key = pack_key(loc.pack)
    data = bytearray(lc.repo.store.get(key))
    for i in range(loc.offset + 8, loc.offset + min(loc.stored_len, 64)):
        data[i] ^= 0xFF
    lc.repo.store.put(key, data)


def test_a_missing_pack_fails_the_restore_cleanly_and_a_later_one_succeeds(
    lifecycle: Lifecycle, make_home: Any
) -> None:
    home = make_home("quinn")
    before = manifest(home)
    assert archive_home(lifecycle, "quinn").outcome == "archived"
    quarantine = quarantine_of(lifecycle, "quinn")
    packs = _take_packs(lifecycle)
    lifecycle.restore_from_quarantine = False
    lc = _reopen(lifecycle)

    with pytest.raises(RestoreFailed) as info:
        restore_home(lc, "quinn", "login")

    message = info.value.get_message()
    assert message.startswith("Your files could not be restored")
    assert "safe in the archive" in message
    row = queries.get_home(lc.db, "quinn")
    assert row.state == FAILED and row.error
    assert only_notice(home)  # not a half-restored home
    assert manifest(quarantine) == before  # untouched
    assert [e.kind for e in queries.events(lc.db, "quinn")][-1] == "error"
    with pytest.raises(RestoreFailed):
        restore_home(lc, "quinn", "login again")  # tried again, still broken
    assert only_notice(home) and manifest(quarantine) == before

    for key, data in packs.items():  # the operator restores the bucket
        lifecycle.repo.store.put(key, data)
    result = restore_home(_reopen(lifecycle), "quinn", "login")

    assert (result.outcome, result.source, result.conflicts) == ("restored", "bucket", [])
    assert manifest(home) == before
    assert queries.get_home(lc.db, "quinn").state == ACTIVE


def test_a_corrupt_blob_fails_the_bucket_restore_and_the_quarantine_still_serves(
    lifecycle: Lifecycle, make_home: Any
) -> None:
    home = make_home("rosa")
    before = manifest(home)
    result = archive_home(lifecycle, "rosa")
    quarantine = quarantine_of(lifecycle, "rosa")
    _corrupt_a_data_blob(lifecycle, result.snapshot or "", "rosa")
    lifecycle.restore_from_quarantine = False

    with pytest.raises(RestoreFailed, match="could not be restored"):
        restore_home(_reopen(lifecycle), "rosa", "login")

    assert queries.get_home(lifecycle.db, "rosa").state == FAILED
    assert only_notice(home) and manifest(quarantine) == before
    assert not [p for p in os.listdir(home.parent) if p.startswith(".hometier-restore")]

    lifecycle.restore_from_quarantine = True
    restored = restore_home(_reopen(lifecycle), "rosa", "login")

    assert (restored.outcome, restored.source) == ("restored", "quarantine")
    assert manifest(home) == before
    assert queries.get_home(lifecycle.db, "rosa").state == ACTIVE


def test_a_failed_restore_leaves_the_quarantine_untouched(
    lifecycle: Lifecycle, make_home: Any
) -> None:
    """With the repository unreadable, a restore that would take the quarantine cannot
    verify it: it must fail without moving the files, so the state (failed, cold) and the
    disk agree and the next restore can still use them."""
    home = make_home("sam")
    before = manifest(home)
    assert archive_home(lifecycle, "sam").outcome == "archived"
    quarantine = quarantine_of(lifecycle, "sam")
    packs = _take_packs(lifecycle)

    with pytest.raises(RestoreFailed):
        restore_home(_reopen(lifecycle), "sam", "login")

    assert queries.get_home(lifecycle.db, "sam").state == FAILED
    assert sorted(os.listdir(home)) == [NOTICE_NAME], "files left the quarantine"
    assert manifest(quarantine) == before
    for key, data in packs.items():
        lifecycle.repo.store.put(key, data)
    result = restore_home(_reopen(lifecycle), "sam", "login")
    assert result.conflicts == [], f"duplicated into {result.conflicts_dir}"
    assert manifest(home) == before
