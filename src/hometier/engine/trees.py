"""Fetch every tree of one or more snapshots in a few coalesced requests."""

from __future__ import annotations

import threading
from typing import Any

import zstandard

from hometier.errors import IntegrityError
from hometier.repo import BlobId, BlobType, Repository
from hometier.repo.fetch import Where
from hometier.repo.tree import Node, decode_tree, raw_nodes, subtrees

MAX_TREES = 5_000_000


class TreeCache:
    """Tree blobs reachable from some roots, fetched level by level, decoded on demand.
    Reading one snapshot (one root, through a view of it with a locator), every tree its
    locator names is fetched in the first round instead: one round of requests whatever
    the depth of its folders (what that round missed is still fetched by level).

    Loading reads only each tree's folder entries (to find the next level); every entry
    is validated when ``nodes`` decodes it. Keeps each verified tree's canonical JSON
    zstd-compressed (level 1, several times smaller) rather than decoded nodes, and
    counts how many parents name each tree so that a single pass (restore's plan) can
    drop every tree once it has read it (``nodes(..., consume=True)``): a home of
    200,000 files costs a few MB here.
    """

    def __init__(
        self,
        repo: Repository,
        roots: list[BlobId],
        *,
        workers: int = 4,
        where: Where | None = None,
        skip: set[bytes] | None = None,
    ) -> None:
        """``where``: the snapshot's locator (``Repository.locator``); without it the
        trees are looked up in the whole index. ``skip``: trees not to load (nor what
        lies below them), e.g. those a prune has already walked."""
        self.raw: dict[bytes, bytes] = {}
        self._refs: dict[bytes, int] = {}
        lock = threading.Lock()
        got: dict[bytes, tuple[list[BlobId], bytes]] = {}
        """Fetched trees: their subtrees and their bytes compressed."""

        def keep(bid: BlobId, data: bytes) -> None:
            # On the fetch threads: parsed and compressed while other trees download.
            entry = (subtrees(data), _cctx().compress(data))
            with lock:
                got[bid] = entry

        if skip:
            roots = [r for r in roots if r not in skip]
        for r in roots:
            self._refs[r] = self._refs.get(r, 0) + 1
        level = list(dict.fromkeys(roots))
        every = _snapshot_trees(repo, where, level) if not skip else []
        if len(every) > MAX_TREES:
            raise IntegrityError("snapshot holds more trees than hometier will load")
        if every:
            # The snapshot's locator names all of its trees: fetch them in one round of
            # coalesced requests rather than one round per level of folders.
            repo.for_each_blob(every, keep, workers=workers, where=where)
        while level:
            need = [b for b in level if b not in got]
            if need:
                repo.for_each_blob(need, keep, workers=workers, where=where)
            if len(self.raw) + len(level) > MAX_TREES:
                raise IntegrityError("snapshot holds more trees than hometier will load")
            this = set(level)
            nxt: dict[bytes, None] = {}
            for bid in level:
                subs, packed = got.pop(bid)
                for sub in subs:
                    self._refs[sub] = self._refs.get(sub, 0) + 1
                    if sub not in self.raw and sub not in this:
                        if skip is None or sub not in skip:
                            nxt[sub] = None
                self.raw[bid] = packed
            level = [BlobId(b) for b in nxt]

    def __contains__(self, bid: object) -> bool:
        return bid in self.raw

    def nodes(self, bid: BlobId, *, consume: bool = False) -> list[Node]:
        """The decoded entries of a tree. With ``consume`` the caller will not ask for
        this occurrence again: the tree is dropped after its last expected reader."""
        return decode_tree(self._data(bid, consume))

    def raw_nodes(self, bid: BlobId, *, consume: bool = False) -> list[Any]:
        """A tree's entries parsed but not validated (``repo.tree.raw_nodes``): for a
        reader that validates only what it uses (``raw_name``, ``node_from_json``)."""
        return raw_nodes(self._data(bid, consume))

    def _data(self, bid: BlobId, consume: bool) -> bytes:
        data = self.raw.get(bid)
        if data is None:
            raise IntegrityError(f"tree {bid.hex()[:16]} was not loaded")
        if consume:
            left = self._refs.get(bid, 1) - 1
            self._refs[bid] = left
            if left <= 0:
                del self.raw[bid]
        return _dctx().decompress(data)

    def ids(self) -> list[BlobId]:
        return [BlobId(b) for b in self.raw]

    def __len__(self) -> int:
        return len(self.raw)


_local = threading.local()


def _snapshot_trees(repo: Repository, where: Where | None, roots: list[BlobId]) -> list[BlobId]:
    """Every tree named by the locator of the snapshot being read, if ``roots`` is that
    snapshot's root (one tree the locator names); else []."""
    from hometier.repo.views import SnapshotWhere

    w = where if where is not None else getattr(repo, "where", None)
    if len(roots) != 1 or not isinstance(w, SnapshotWhere) or not w.has_locator:
        return []
    loc = w.get(roots[0])
    return w.trees() if loc is not None and loc.type == BlobType.TREE else []


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=1)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    # zstandard contexts must not be shared between threads.
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d
