"""Prune's cache of what each snapshot reaches: reused, never trusted blindly.

Real repositories (a local folder; SeaweedFS for the reuse test). Reads are counted by
wrapping the store's ``get``/``get_ranges`` and the repository's ``for_each_blob``;
"nothing used was deleted" is checked by restoring every kept snapshot after the sweep
and comparing it with the home it was taken from, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.engine.prune import forget, prune
from hometier.engine.usage import Memo, reach
from hometier.engine.usedcache import summary_cache
from hometier.engine.verify import VerifyFailed, verify_snapshot
from hometier.repo import Repository
from hometier.repo.ids import pack_key
from hometier.repo.snapshot import Snapshot
from hometier.store import open_store

from .lifecycle.conftest import manifest

Manifest = dict[str, tuple[Any, ...]]


def _fill(home: Path, seed: str, files: int = 30) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = home / f"a{i % 3}" / f"b{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(rng.randbytes(rng.randrange(100, 4000)))


def _edit(home: Path, seed: str) -> None:
    rng = random.Random(seed)
    files = sorted(home.rglob("f*.txt"))
    for p in rng.sample(files, 2):
        p.write_bytes(rng.randbytes(rng.randrange(100, 4000)))
    (home / "a0" / f"new-{seed}.txt").write_bytes(rng.randbytes(2000))


class World:
    """A repository, its homes, and a copy of each home as every snapshot took it."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.cache = str(tmp / "cache")
        self.repo = Repository.create(open_store(url), cache_dir=self.cache)
        self.taken: dict[str, Manifest] = {}

    def reopen(self) -> Repository:
        """A new process's view: a fresh Repository on the same cache folder."""
        self.repo = Repository.open(open_store(self.url), cache_dir=self.cache)
        return self.repo

    def home(self, user: str) -> Path:
        return self.tmp / "homes" / user

    def snap(self, user: str, parent: Snapshot | None = None) -> Snapshot:
        s = backup(self.repo, self.home(user), user=user, parent=parent, workers=2)
        self.taken[s.id] = manifest(self.home(user))
        return s

    def history(self, user: str, n: int) -> list[Snapshot]:
        _fill(self.home(user), user)
        out = [self.snap(user)]
        for k in range(1, n):
            _edit(self.home(user), f"{user}-{k}")
            out.append(self.snap(user, out[-1]))
        return out

    def prune(self, now: dt.datetime, **kw: Any) -> Any:
        return prune(self.repo, now=now, grace=dt.timedelta(0), **kw)

    def restore_all(self) -> int:
        """Restore every snapshot left in the bucket, from a fresh repository with an
        empty cache, and compare it with the home it was taken from."""
        fresh = Repository.open(open_store(self.url), cache_dir=str(self.tmp / "cache-check"))
        n = 0
        for s in fresh.list_snapshots():
            target = self.tmp / f"restored-{s.id[:12]}"
            restore(fresh, s, target, workers=2, processes=0)
            assert manifest(target) == self.taken[s.id], s.id
            shutil.rmtree(target)
            n += 1
        return n


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(f"file://{tmp_path}/repo", tmp_path)


class Reads:
    """Store keys read (GET and ranged GET) and blob ids asked of ``for_each_blob``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, repo: Repository) -> None:
        self.keys: list[str] = []
        self.blobs: set[bytes] = set()
        store = repo.store
        get, get_ranges = store.get, store.get_ranges

        def counted_get(key: str) -> bytes:
            self.keys.append(key)
            return get(key)

        def counted_ranges(key: str, ranges: Any, **kw: Any) -> list[bytes]:
            self.keys.append(key)
            return get_ranges(key, ranges, **kw)

        monkeypatch.setattr(store, "get", counted_get)
        monkeypatch.setattr(store, "get_ranges", counted_ranges)
        original = Repository.for_each_blob

        def for_each_blob(repo: Repository, ids: Any, fn: Callable[..., None], **kw: Any) -> None:
            ids = list(ids)
            self.blobs.update(bytes(b) for b in ids)
            original(repo, ids, fn, **kw)

        monkeypatch.setattr(Repository, "for_each_blob", for_each_blob)


def _trees(repo: Repository, snap: Snapshot) -> set[bytes]:
    """Every blob the snapshot reaches that is a tree (found by walking it)."""
    ids, _ = reach(repo, snap, Memo())
    trees = set()
    for bid in ids:
        loc = repo.blobs.get(bid)  # type: ignore[arg-type]
        assert loc is not None
        if loc.type.name.lower() == "tree":
            trees.add(bid)
    return trees


def _later(hours: int = 1) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def any_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "file":
        yield World(f"file://{tmp_path}/repo", tmp_path)
    else:
        yield World(request.getfixturevalue("s3_url"), tmp_path)


def test_second_prune_reads_only_the_new_snapshot(
    any_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = any_world
    snaps = {u: w.history(u, 3) for u in ("ann", "bob", "cy")}
    first = w.prune(_later())
    assert (first.snapshots, first.snapshots_walked) == (9, 9)

    _edit(w.home("ann"), "ann-new")
    new = w.snap("ann", snaps["ann"][-1])
    repo = w.reopen()  # the cache must live on disk, not in a Repository object
    repo.load_index()
    old = [s for ss in snaps.values() for s in ss]
    old_trees = set().union(*(_trees(repo, s) for s in old))
    new_trees = _trees(repo, new)
    reads = Reads(monkeypatch, repo)
    second = w.prune(_later())
    assert (second.snapshots, second.snapshots_walked) == (10, 1), second
    assert second.summaries_refused == 0
    # Nothing of an old snapshot was read: not its document, not its locator, and no
    # tree that only old snapshots reach.
    for s in old:
        assert not [k for k in reads.keys if s.id in k], s.id
    assert reads.blobs, "the new snapshot was walked"
    assert reads.blobs <= new_trees
    assert not reads.blobs & (old_trees - new_trees)
    third = w.prune(_later())
    assert third.snapshots_walked == 0 and third.trees_read == 0
    assert w.restore_all() == 10


def _entry(w: World, sid: str) -> Path:
    folder = Path(w.repo.blobs.folder) / "used"
    return folder / f"{sid}.sum"


def test_damaged_foreign_or_missing_entries_are_walked_again(world: World) -> None:
    w = world
    snaps = {u: w.history(u, 3) for u in ("dan", "eve")}
    w.prune(_later())
    dan, eve = snaps["dan"], snaps["eve"]
    # Damage five entries in five ways; each loses blob ids if it were believed.
    p = _entry(w, dan[0].id)
    p.write_bytes(p.read_bytes()[: -32 * 5 - 32])  # truncated
    p = _entry(w, dan[1].id)
    data = bytearray(p.read_bytes())
    data[64 + 40] ^= 0x01  # one id changed
    p.write_bytes(bytes(data))
    shutil.copy(_entry(w, eve[0].id), _entry(w, dan[2].id))  # another snapshot's entry
    p = _entry(w, eve[1].id)
    other = World(f"file://{w.tmp}/other", w.tmp / "o")
    from hometier.engine.usedcache import SummaryCache, repo_tag

    foreign = SummaryCache(str(w.tmp / "foreign"), repo_tag(other.repo.config.id, b"k" * 32))
    foreign.write(eve[1].id, [bytes(32)])  # a well-formed entry of another repository
    shutil.copy(w.tmp / "foreign" / p.name, p)
    _entry(w, eve[2].id).unlink()  # missing

    # Forget the oldest of each so that packs become unused and are swept for real.
    forget(w.repo, [dan[0], eve[0]])
    for s in (dan[0], eve[0]):
        del w.taken[s.id]
    w.reopen()
    hour_ago = time.time() - 3600  # as between two real prunes: older than any listing
    for p in _entry(w, dan[1].id).parent.iterdir():
        os.utime(p, (hour_ago, hour_ago))
    marked = w.prune(_later())
    assert marked.summaries_refused == 3, marked  # (dan[0] is forgotten: not read)
    assert marked.snapshots_walked == 4  # dan[1], dan[2], eve[1], eve[2]
    assert marked.packs_marked > 0
    swept = w.prune(_later(2))
    assert swept.packs_deleted > 0 and swept.snapshots_walked == 0
    assert w.restore_all() == 4
    assert not _entry(w, dan[0].id).exists() and not _entry(w, eve[0].id).exists()


def _packs(w: World) -> set[str]:
    return {o.key for o in w.repo.store.list("packs/")}


def _pack_of(w: World, data: bytes) -> str:
    loc = w.repo.blobs.get(w.repo.blob_id(data))
    assert loc is not None
    return pack_key(loc.pack)


def test_forgotten_snapshot_stops_counting_and_shared_blobs_stay(world: World) -> None:
    w = world
    fay = w.history("fay", 2)
    home = w.home("fay")
    only = os.urandom(400_000)
    (home / "only-here.bin").write_bytes(only)
    s2 = w.snap("fay", fay[-1])
    (home / "only-here.bin").unlink()
    shared = os.urandom(300_000)
    (home / "shared.bin").write_bytes(shared)
    s3 = w.snap("fay", s2)
    (home / "shared.bin").unlink()
    s4 = w.snap("fay", s3)
    w.prune(_later())  # every snapshot summarised, nothing unused yet
    only_pack, shared_pack = (_pack_of(w, data) for data in (only, shared))
    assert {only_pack, shared_pack} <= _packs(w)

    # s2 and s3 are forgotten; then gus backs up the content of shared.bin: it is
    # deduplicated against s3's pack, which nothing else uses.
    forget(w.repo, [s2, s3])
    del w.taken[s2.id], w.taken[s3.id]
    w.home("gus").mkdir(parents=True)
    (w.home("gus") / "copy.bin").write_bytes(shared)
    gus = w.snap("gus")

    w.reopen()
    marked = w.prune(_later())
    assert marked.snapshots_walked == 1  # gus only: fay's are cached
    assert marked.packs_marked >= 1  # s2's data pack at least
    swept = w.prune(_later(2))
    assert swept.packs_deleted == marked.packs_marked
    left = _packs(w)
    assert only_pack not in left  # what only the forgotten s2 used is gone
    assert shared_pack in left  # what gus shares with the forgotten s3 stays
    assert w.restore_all() == 4
    assert {s.id for s in w.repo.list_snapshots()} == {fay[0].id, fay[1].id, s4.id, gus.id}


def test_snapshots_without_a_locator_are_summarised_too(tmp_path: Path) -> None:
    """A repository written by hometier 0.1 (format 1: no locators) prunes the same way:
    its trees are found through the index, walked once, then read from the cache."""
    from treeutil import snapshot_of_tree

    copy = tmp_path / "v1"
    shutil.copytree(Path(__file__).resolve().parent.parent / "golden" / "repo-v1", copy)
    url, cache = f"file://{copy}", str(tmp_path / "cache")
    repo = Repository.open(open_store(url), cache_dir=cache)
    (snap,) = repo.list_snapshots()
    restore(repo, snap, tmp_path / "before", workers=2, processes=0)
    first = prune(repo, now=_later(), grace=dt.timedelta(0))
    assert (first.snapshots, first.snapshots_walked) == (1, 1) and first.trees_read > 0
    repo = Repository.open(open_store(url), cache_dir=cache)
    second = prune(repo, now=_later(2), grace=dt.timedelta(0))
    assert (second.snapshots, second.snapshots_walked, second.trees_read) == (1, 0, 0)
    assert second.packs_deleted == 0
    restore(repo, snap, tmp_path / "after", workers=2, processes=0)
    assert snapshot_of_tree(tmp_path / "after") == snapshot_of_tree(tmp_path / "before")


def test_a_verified_snapshot_is_summarised_as_a_walk_would_and_never_walked(
    any_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archiver writes each snapshot's entry when it verifies it. The entry holds
    exactly what ``reach`` finds (trees shared between homes and snapshots, a file
    repeated in two folders, an empty folder), prune then walks nothing, and what it
    sweeps after forgetting leaves every kept snapshot restorable."""
    w = any_world
    snaps = {u: w.history(u, 3) for u in ("hal", "ida")}
    ida = w.home("ida")
    (ida / "empty").mkdir()
    (ida / "twice").mkdir()
    shutil.copy(next(ida.rglob("f*.txt")), ida / "twice" / "copy.txt")
    shutil.copytree(w.home("hal") / "a1", ida / "from-hal")
    (ida / "nothing.txt").write_bytes(b"")
    os.link(ida / "twice" / "copy.txt", ida / "hardlink.txt")
    os.symlink("twice/copy.txt", ida / "link")
    os.mkfifo(ida / "pipe")
    with open(ida / "sparse.bin", "wb") as f:
        f.seek(8 << 20)
        f.write(os.urandom(5000))
        f.truncate(20 << 20)
    snaps["ida"].append(w.snap("ida", snaps["ida"][-1]))
    cache = summary_cache(w.repo)
    for s in (s for ss in snaps.values() for s in ss):
        verify_snapshot(w.repo, s, workers=2, summaries=cache)
        entry = b"".join(cache.read(s.id) or [b"missing"])
        walked, _ = reach(w.repo, s, Memo())
        assert entry == b"".join(walked), s.id
    w.reopen()
    reads = Reads(monkeypatch, w.repo)
    first = w.prune(_later())
    assert (first.snapshots, first.snapshots_walked, first.trees_read) == (7, 0, 0), first
    assert not reads.blobs, "no tree was read"
    forget(w.repo, [snaps["hal"][0], snaps["ida"][0]])
    for s in (snaps["hal"][0], snaps["ida"][0]):
        del w.taken[s.id]
    w.prune(_later())
    swept = w.prune(_later(2))
    assert swept.packs_deleted > 0 and swept.snapshots_walked == 0, swept
    assert w.restore_all() == 5


def _data_blobs(repo: Repository, snap: Snapshot) -> list[bytes]:
    ids, _ = reach(repo, snap, Memo())
    return [b for b in ids if repo.blobs.get(b).type.name.lower() == "data"]  # type: ignore[arg-type, union-attr]


def test_a_snapshot_that_fails_verification_leaves_no_entry(world: World) -> None:
    """Every tree reads back, but a data pack is missing (the pack check fails), or,
    with ``read_data``, a data blob no longer matches its id: no entry either way."""
    w = world
    (snap,) = w.history("joe", 1)
    cache = summary_cache(w.repo)
    data = _data_blobs(w.repo, snap)
    pack = w.repo.blobs.get(data[0]).pack  # type: ignore[arg-type, union-attr]
    kept = w.tmp / "kept-pack"
    kept.write_bytes(w.repo.store.get(pack_key(pack)))
    w.repo.store.delete(pack_key(pack))
    with pytest.raises(VerifyFailed, match="missing"):
        verify_snapshot(w.repo, snap, workers=2, summaries=cache)
    assert cache.read(snap.id) is None

    # The pack back, with one byte of a data blob changed.
    loc = w.repo.blobs.get(data[0])  # type: ignore[arg-type]
    assert loc is not None
    raw = bytearray(kept.read_bytes())
    raw[loc.offset + loc.stored_len // 2] ^= 0x01
    w.repo.store.put(pack_key(pack), bytes(raw))
    w.reopen()
    with pytest.raises(VerifyFailed):
        verify_snapshot(w.repo, snap, workers=2, read_data=True, summaries=summary_cache(w.repo))
    assert summary_cache(w.repo).read(snap.id) is None
