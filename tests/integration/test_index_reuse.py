"""A backup reuses its process's listing of ``index/`` (``Repository.load_index_for_backup``)
and must never come to reference a pack that a prune in another process deleted.

Listing ``index/`` costs O(every index object in the bucket), so a long-running archiver
lists it at most every ``INDEX_REUSE`` seconds; the marks and the ``epoch`` object are
still read at every backup. The attacks: a prune in another process marks and sweeps a
pack between two backups of this one (the epoch must send the second backup back to the
listing), and a sweep that is under way while this process lists (the marks it saw must
stay in force after the sweep removed them). Each runs on memory, local folder and
SeaweedFS stores.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, check, restore
from hometier.repo import Repository
from hometier.repo.ids import BlobType, pack_key
from hometier.repo.index import VALUE
from hometier.store import open_store
from treeutil import record_calls

repository_mod = importlib.import_module("hometier.repo.repository")
prune_mod = importlib.import_module("hometier.engine.prune")

SHARED = os.urandom(700_000)
"""Content two homes share: the second backup would deduplicate against the first's."""


def home(root: Path, name: str, extra: bytes) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "shared.bin").write_bytes(SHARED)
    (d / "own.txt").write_bytes(extra)
    return d


def open_repo(url: str) -> Repository:
    return Repository.open_or_create(open_store(url))[0]


def packs(repo: Repository) -> set[str]:
    return {o.key for o in repo.store.list("packs/")}


def test_a_second_backup_reads_the_marks_and_the_epoch_but_does_not_list_the_index(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = open_repo(store_url)
    backup(repo, home(tmp_path, "ann", b"a"), user="ann")
    listed = record_calls(repo.store, "list")
    got = record_calls(repo.store, "get")
    snap = backup(repo, home(tmp_path, "bob", b"b"), user="bob")
    assert "prune/" in listed and "epoch" in got
    assert "index/" not in listed, listed
    assert snap.stats.bytes_new_stored < len(SHARED)  # deduplicated against ann's

    monkeypatch.setattr(repository_mod, "INDEX_REUSE", 0.0)
    backup(repo, home(tmp_path, "cai", b"c"), user="cai")
    assert "index/" in listed  # too old: listed again


def test_a_sweep_in_another_process_sends_the_next_backup_back_to_the_listing(
    tmp_path: Path, store_url: str
) -> None:
    archiver = open_repo(store_url)
    first = backup(archiver, home(tmp_path, "ann", b"a"), user="ann")
    before = packs(archiver)

    # Another process forgets ann's snapshot and prunes it away, marks and all, while
    # this process's listing of ``index/`` still names the shared content's pack.
    other = Repository.open(open_store(store_url))
    other.delete_snapshot(first)
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(minutes=10)
    assert prune_mod.prune(other, now=now, grace=grace).packs_marked > 0
    swept = prune_mod.prune(other, now=now + 2 * grace, grace=grace)
    assert swept.packs_deleted > 0
    assert not list(other.store.list("prune/"))  # the marks are gone with the packs
    gone = before - packs(archiver)
    assert gone

    listed = record_calls(archiver.store, "list")
    snap = backup(archiver, home(tmp_path, "bob", b"b"), user="bob")
    assert "index/" in listed  # the epoch changed: listed again
    assert snap.stats.bytes_new_stored >= len(SHARED) // 2  # stored again, not reused
    check(Repository.open(open_store(store_url)), read_data=True)
    restore(archiver, snap, tmp_path / "back")
    assert (tmp_path / "back" / "shared.bin").read_bytes() == SHARED
    assert not any(k in gone for k in map(pack_key, _packs(archiver, snap)))


def test_marks_seen_while_a_sweep_runs_stay_in_force_after_it_removed_them(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep rewrote the epoch before this process read it, and deletes the pack and
    its mark after this process listed ``index/``: the epoch then looks unchanged at the
    next backup, and only the marks seen at the listing keep the pack excluded."""
    archiver = open_repo(store_url)
    first = backup(archiver, home(tmp_path, "ann", b"a"), user="ann")
    other = Repository.open(open_store(store_url))
    other.delete_snapshot(first)
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(minutes=10)
    prune_mod.prune(other, now=now, grace=grace)

    real = prune_mod.rewrite_locators
    seen: list[int] = []

    def list_in_the_middle(*a: Any, **kw: Any) -> Any:
        # The epoch is rewritten, nothing is deleted yet: this process lists now.
        archiver.load_index()
        seen.append(len(archiver.doomed))
        return real(*a, **kw)

    monkeypatch.setattr(prune_mod, "rewrite_locators", list_in_the_middle)
    swept = prune_mod.prune(other, now=now + 2 * grace, grace=grace)
    assert swept.packs_deleted > 0 and seen and seen[0] > 0

    listed = record_calls(archiver.store, "list")
    snap = backup(archiver, home(tmp_path, "bob", b"b"), user="bob")
    assert "index/" not in listed  # the epoch is the one it read: the listing is reused
    assert snap.stats.bytes_new_stored >= len(SHARED) // 2  # the marked pack was not used
    check(Repository.open(open_store(store_url)), read_data=True)
    restore(archiver, snap, tmp_path / "back")
    assert (tmp_path / "back" / "shared.bin").read_bytes() == SHARED


def test_an_incremental_backup_finds_its_parents_blobs_through_the_locator_per_pack(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unchanged files of the parent are reused with one index lookup per pack their
    blobs sit in (the parent's locator says which), not one per blob."""
    repo = open_repo(store_url)
    src = home(tmp_path, "ann", b"a")
    for i in range(40):
        (src / f"small-{i}.txt").write_bytes(os.urandom(50) + b"%d" % i)
    first = backup(repo, src, user="ann")
    (src / "own.txt").write_bytes(b"changed")
    per_blob = record_calls(repo.blobs, "get")
    per_pack = record_calls(repo.blobs, "usable_pack")
    second = backup(repo, src, user="ann", parent=first)
    assert second.stats.files_read == 1 and second.stats.files == first.stats.files
    # Only the changed file's blob and the new root tree are looked up (twice each:
    # before reading and when storing); the 41 unchanged files' blobs are not.
    assert len(set(per_blob)) <= 2, len(per_blob)
    assert 0 < len(per_pack) <= len(_packs(repo, first)), per_pack
    # The new snapshot's locator names every blob it needs: a strict restore reads
    # through it alone.
    restore(repo.for_snapshot(second, strict=True), second, tmp_path / "back")
    assert (tmp_path / "back" / "shared.bin").read_bytes() == SHARED
    assert (tmp_path / "back" / "own.txt").read_bytes() == b"changed"
    check(Repository.open(open_store(store_url)), read_data=True)


def test_an_incremental_backup_does_not_reuse_its_parents_blobs_from_a_marked_pack(
    tmp_path: Path, store_url: str
) -> None:
    """The parent was forgotten by another process and a prune marked its packs while
    this archiver still holds it (and its locator): the files it reuses by their
    metadata must be stored again, not pointed at packs about to be deleted."""
    archiver = open_repo(store_url)
    src = home(tmp_path, "ann", b"a")
    first = backup(archiver, src, user="ann")
    assert archiver.for_snapshot(first).where.has_locator  # loaded, in this process
    other = Repository.open(open_store(store_url))
    other.delete_snapshot(first)
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(minutes=10)
    assert prune_mod.prune(other, now=now, grace=grace).packs_marked > 0

    put = record_calls(archiver.store, "put")
    second = backup(archiver, src, user="ann", parent=first)
    # Nothing changed on disk, yet both files are read and their packs written again
    # (the same bytes make the same pack ids: the sweep then finds them named by a new
    # index object and keeps them).
    assert second.stats.files_read == 2
    assert second.stats.bytes_new_stored >= len(SHARED) // 2
    assert {k for k in put if k.startswith("packs/")} >= set(
        map(pack_key, _packs(archiver, second))
    )
    prune_mod.prune(other, now=now + 2 * grace, grace=grace)
    check(Repository.open(open_store(store_url)), read_data=True)
    restore(archiver, second, tmp_path / "back")
    assert (tmp_path / "back" / "shared.bin").read_bytes() == SHARED


def test_a_parents_locator_that_disagrees_with_the_index_is_not_copied(
    tmp_path: Path, store_url: str
) -> None:
    """The parent's locator (as this process holds it) places the blobs of a pack
    elsewhere than the index does: nothing of that pack is taken from it; the index
    decides, and the new snapshot's locator has the index's places."""
    archiver = open_repo(store_url)
    src = home(tmp_path, "ann", b"a")
    for i in range(10):
        (src / f"small-{i}.txt").write_bytes(os.urandom(300))
    first = backup(archiver, src, user="ann")
    loc = archiver.cached_locator(first.id)
    assert loc is not None
    shifted = 0
    for bid, raw in list(loc.index._map.items()):  # noqa: SLF001 - every file's place
        no, off, stored, raw_len, typ, comp = VALUE.unpack(raw)
        if typ == BlobType.DATA:
            loc.index._map[bid] = VALUE.pack(no, off + 1, stored, raw_len, typ, comp)  # noqa: SLF001
            shifted += 1
    assert shifted == 12

    second = backup(archiver, src, user="ann", parent=first)
    assert second.stats.files_read == 0  # the index still finds every blob
    view = Repository.open(open_store(store_url)).for_snapshot(second, strict=True)
    assert view.where.has_locator
    for bid in view.where._locator().index._map:  # noqa: SLF001
        assert view.where.get(bid) in archiver.blobs.locations(bid)
    restore(view, second, tmp_path / "back")
    assert (tmp_path / "back" / "shared.bin").read_bytes() == SHARED
    check(Repository.open(open_store(store_url)), read_data=True)


def test_repair_index_rewrites_the_epoch_before_it_deletes(tmp_path: Path) -> None:
    from hometier.engine.maintenance import repair_index

    repo = open_repo(f"file://{tmp_path}/repo")
    backup(repo, home(tmp_path, "ann", b"a"), user="ann")
    backup(repo, home(tmp_path, "bob", b"b"), user="bob")
    before = repo.read_epoch()
    order: list[str] = []
    real_put, real_delete = repo.store.put, repo.store.delete

    def put(key: str, *a: Any, **kw: Any) -> Any:
        order.append(f"put {key}")
        return real_put(key, *a, **kw)

    def delete(key: str) -> Any:
        order.append(f"delete {key}")
        return real_delete(key)

    repo.store.put, repo.store.delete = put, delete  # type: ignore[method-assign]
    report = repair_index(repo, now=dt.datetime.now(dt.UTC))
    assert report.index_objects_deleted > 0
    assert repo.read_epoch() != before
    first_delete = next(i for i, o in enumerate(order) if o.startswith("delete index/"))
    assert "put epoch" in order[:first_delete]


def _packs(repo: Repository, snap: Any) -> set[bytes]:
    view = repo.for_snapshot(snap, strict=True)
    return set(view.pack_sizes())
