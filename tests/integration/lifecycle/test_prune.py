"""Retention and prune: two phases, never a broken snapshot, also while archives run.

Runs on SQLite and PostgreSQL with the real SeaweedFS bucket (the ``lifecycle`` fixture).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hometier.engine import backup, check
from hometier.engine.prune import prune, select_forget
from hometier.engine.usage import Memo, reach
from hometier.engine.usedcache import summary_cache
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.policy import Retention
from hometier.lifecycle.restoring import restore_home
from hometier.lifecycle.retention import apply_retention
from hometier.repo import BlobType, Repository
from hometier.store import open_store
from treeutil import record_calls

from .conftest import FakeClock, manifest


def _grow(home: Path, n: int) -> None:
    (home / f"new-{n}.bin").write_bytes(os.urandom(300_000))


def test_select_forget_keeps_last_recent_and_newest_complete(
    lifecycle: Lifecycle, make_home: Callable[..., Path]
) -> None:
    home = make_home("ann")
    snaps = []
    for i in range(4):
        _grow(home, i)
        snaps.append(backup(lifecycle.repo, home, user="ann"))
    now = snaps[-1].time + dt.timedelta(days=100)
    keep, forget = select_forget(snaps, now, keep_last=2, keep_within=None)
    assert [s.id for s in keep] == [snaps[3].id, snaps[2].id]
    assert {s.id for s in forget} == {snaps[0].id, snaps[1].id}
    keep, forget = select_forget(snaps, now, keep_last=0, keep_within=dt.timedelta(days=1))
    assert [s.id for s in keep] == [snaps[3].id]  # the newest complete one, always


def test_prune_marks_then_sweeps_after_the_grace_period(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock
) -> None:
    home = make_home("bea")
    before = manifest(home)
    first = archive_home(lifecycle, "bea")
    assert first.outcome == "archived"
    restore_home(lifecycle, "bea", "test")
    for i in range(3):  # later snapshots replace what the first stored
        (home / "data.bin").write_bytes(os.urandom(2_000_000))
        _grow(home, i)
        backup(lifecycle.repo, home, user="bea", parent=lifecycle.repo.list_snapshots("bea")[-1])
    retention = Retention(keep_last=1, keep_within=None, grace=dt.timedelta(hours=2))
    clock.set(dt.datetime.now(dt.UTC))
    report = apply_retention(lifecycle, retention)
    assert report.forgotten["bea"], report
    assert report.prune is not None and report.prune.packs_marked > 0
    assert report.prune.packs_deleted == 0  # marked, not yet swept
    packs_before = {o.key for o in lifecycle.repo.store.list("packs/")}

    clock.advance(hours=1)  # still inside the grace period
    assert apply_retention(lifecycle, retention).prune.packs_deleted == 0  # type: ignore[union-attr]
    clock.advance(hours=2)
    swept = apply_retention(lifecycle, retention).prune
    assert swept is not None and swept.packs_deleted > 0 and swept.index_rewritten
    assert len({o.key for o in lifecycle.repo.store.list("packs/")}) < len(packs_before)
    assert not list(lifecycle.repo.store.list("prune/"))
    fresh = Repository.open(open_store(lifecycle.repo.store.url))
    check(fresh, read_data=True)
    # The kept snapshot still restores byte for byte.
    latest = fresh.list_snapshots("bea")[-1]
    from hometier.engine import restore

    target = home.parent / "bea-copy"
    restore(fresh, latest, target)
    assert manifest(target) == manifest(home)
    assert before != manifest(home)


def test_a_snapshot_that_reused_marked_data_rescues_it(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock
) -> None:
    """An archive that loaded the index before the mark may still point at marked packs:
    the sweep finds its snapshot and keeps them."""
    home = make_home("cai")
    old = backup(lifecycle.repo, home, user="cai")
    slow_writer = Repository.open(open_store(lifecycle.repo.store.url))
    slow_writer.load_index()
    # An archive that began before the mark: it read the index (and the marks) then, and
    # does not read them again during its run.
    slow_writer.load_index = lambda *a, **k: len(slow_writer.index)  # type: ignore[method-assign]
    slow_writer.load_index_for_backup = slow_writer.load_index  # type: ignore[method-assign]
    lifecycle.repo.delete_snapshot(old)
    now = dt.datetime.now(dt.UTC)
    marked = prune(lifecycle.repo, now=now, grace=dt.timedelta(minutes=10))
    assert marked.packs_marked > 0
    again = backup(slow_writer, home, user="cai")  # dedups against the marked packs
    assert again.stats.bytes_new_stored < again.stats.bytes  # it did reuse them
    swept = prune(
        lifecycle.repo, now=now + dt.timedelta(minutes=11), grace=dt.timedelta(minutes=10)
    )
    assert swept.packs_rescued > 0
    check(Repository.open(open_store(lifecycle.repo.store.url)), read_data=True)


@pytest.mark.parametrize("pruner_repo", ["shared", "own"])
def test_prune_concurrent_with_archiving_never_breaks_a_snapshot(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock, pruner_repo: str
) -> None:
    """``own``: the pruner opens the repository itself, as another replica would, so the
    archiver's backups learn of its sweeps only from the bucket (the marks and the epoch,
    between listings of ``index/`` they reuse)."""
    users = [f"u{i}" for i in range(4)]
    homes = {u: make_home(u) for u in users}
    expected = {u: manifest(h) for u, h in homes.items()}
    clock.set(dt.datetime.now(dt.UTC))
    errors: list[BaseException] = []
    stop = threading.Event()

    def archiver() -> None:
        try:
            for round_ in range(3):
                for u in users:
                    (homes[u] / f"r{round_}.bin").write_bytes(os.urandom(400_000))
                    expected[u] = manifest(homes[u])
                    assert archive_home(lifecycle, u).outcome == "archived"
                    restore_home(lifecycle, u, "test")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    retention = Retention(keep_last=1, keep_within=None, grace=dt.timedelta(seconds=1))
    pruning = lifecycle
    if pruner_repo == "own":
        pruning = dataclasses.replace(
            lifecycle, repo=Repository.open(open_store(lifecycle.repo.store.url))
        )
    listings = record_calls(lifecycle.repo.store, "list")
    sweeps = [0]

    def pruner() -> None:
        try:
            while not stop.is_set():
                clock.set(dt.datetime.now(dt.UTC))
                report = apply_retention(pruning, retention).prune
                sweeps[0] += bool(report and report.packs_deleted)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=archiver), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    print(
        f"prune beside archives ({pruner_repo} repository): {sweeps[0]} sweeps that deleted "
        f"packs, {listings.count('index/')} listings of index/ by the archiver"
    )
    clock.set(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    apply_retention(lifecycle, retention)  # a last sweep
    check(Repository.open(open_store(lifecycle.repo.store.url)), read_data=True)
    for u in users:
        assert archive_home(lifecycle, u).outcome == "archived"
        lifecycle.restore_from_quarantine = False
        restore_home(lifecycle, u, "test")
        assert manifest(homes[u]) == expected[u], u


def test_archived_snapshots_are_summarised_so_that_prune_walks_none(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock
) -> None:
    """An archive verifies its snapshot by reading the trees back; it leaves the
    snapshot's used-blob summary then, and the first prune after a day of archives reads
    no tree. A snapshot made outside the archiver (``hometier backup``) is walked."""
    for user in ("eli", "flo"):
        make_home(user)
        assert archive_home(lifecycle, user).outcome == "archived"
    other = make_home("gus")
    backup(lifecycle.repo, other, user="gus")
    cache = summary_cache(lifecycle.repo)
    for snap in lifecycle.repo.list_snapshots():
        entry = cache.read(snap.id)
        if snap.user == "gus":
            assert entry is None
            continue
        assert entry is not None, snap.user
        walked, _ = reach(lifecycle.repo, snap, Memo())
        assert b"".join(entry) == b"".join(walked), snap.user
    retention = Retention(keep_last=5, keep_within=None, grace=dt.timedelta(hours=2))
    clock.set(dt.datetime.now(dt.UTC))
    rep = apply_retention(lifecycle, retention)
    assert rep.prune is not None, rep
    assert (rep.prune.snapshots, rep.prune.snapshots_walked) == (3, 1), rep.prune


def test_retention_reads_each_snapshot_document_once_across_runs(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock
) -> None:
    """Retention lists every snapshot at every run; a document it has read (they never
    change) comes from the local cache the next time, and what retention forgets
    leaves the cache with it."""
    home = make_home("cid")
    for i in range(3):
        _grow(home, i)
        backup(lifecycle.repo, home, user="cid")
    retention = Retention(keep_last=2, keep_within=None, grace=dt.timedelta(hours=2))
    clock.set(dt.datetime.now(dt.UTC))
    first = apply_retention(lifecycle, retention)
    assert len(first.forgotten["cid"]) == 1
    read: list[str] = []
    real_get = lifecycle.repo.store.get

    def get(key: str, *a: object, **kw: object) -> bytes:
        read.append(key)
        return real_get(key, *a, **kw)  # type: ignore[arg-type]

    lifecycle.repo.store.get = get  # type: ignore[method-assign]
    try:
        again = apply_retention(lifecycle, retention)
    finally:
        del lifecycle.repo.store.get
    assert again.forgotten == {}
    assert [k for k in read if k.startswith("snapshots/")] == []
    gone = first.forgotten["cid"][0]
    assert not list(Path(lifecycle.repo._cache_folder()).rglob(f"snapshots/{gone}"))


def test_a_run_that_can_find_nothing_new_skips_the_prune_until_something_goes(
    lifecycle: Lifecycle, make_home: Callable[..., Path], clock: FakeClock
) -> None:
    """A prune costs O(repository); data becomes unused only when a snapshot goes. The
    run after a full prune that forgets nothing, with no mark waiting, skips it; a
    snapshot forgotten by another process, a week, or a new process bring it back."""
    home = make_home("dan")
    (home / "only-in-the-first.bin").write_bytes(os.urandom(400_000))
    for i in range(2):
        _grow(home, i)
        backup(lifecycle.repo, home, user="dan")
        (home / "only-in-the-first.bin").unlink(missing_ok=True)
    retention = Retention(
        keep_last=5, keep_within=None, grace=dt.timedelta(hours=2), repack_waste=0.3
    )
    clock.set(dt.datetime.now(dt.UTC))
    first = apply_retention(lifecycle, retention)
    assert first.prune is not None and first.skipped is None

    listed = record_calls(lifecycle.repo.store, "list")
    clock.advance(hours=24)
    _grow(home, 2)
    backup(lifecycle.repo, home, user="dan")  # a new snapshot only adds what is used
    del listed[:]
    quiet = apply_retention(lifecycle, retention)
    assert quiet.prune is None and quiet.skipped and "no mark" in quiet.skipped
    assert not {"index/", "packs/"} & set(listed), listed

    # Another process forgets the oldest snapshot: its data may be unused now.
    other = Repository.open(open_store(lifecycle.repo.store.url))
    other.delete_snapshot(other.list_snapshots("dan")[0])
    clock.advance(hours=24)
    back = apply_retention(lifecycle, retention)
    assert back.prune is not None and back.prune.packs_repacked > 0, back  # and marked

    # A mark waits: no skip until it is swept.
    clock.advance(hours=1)
    waiting = apply_retention(lifecycle, retention)
    assert waiting.prune is not None and waiting.prune.marks_waiting == 1
    clock.advance(hours=2)
    swept = apply_retention(lifecycle, retention)
    assert swept.prune is not None and swept.prune.packs_deleted > 0
    clock.advance(hours=24)
    assert apply_retention(lifecycle, retention).prune is None

    # What a failed archive left (an indexed pack no snapshot reaches) waits for the
    # weekly full prune at the latest.
    with lifecycle.repo.writer() as w:
        w.add(BlobType.DATA, os.urandom(200_000))
        w.flush()  # packed and indexed; no snapshot will ever reach it
    clock.advance(days=3)
    assert apply_retention(lifecycle, retention).prune is None
    clock.advance(days=5)
    weekly = apply_retention(lifecycle, retention)
    assert weekly.prune is not None and weekly.prune.packs_marked >= 1

    fresh = dataclasses.replace(lifecycle, last_full_prune=None)  # a new process
    clock.advance(hours=24)
    assert apply_retention(fresh, retention).prune is not None
