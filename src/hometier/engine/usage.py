"""Which blobs the snapshots use, and how much of each pack that is, in bounded memory.

Prune needs the set of every blob some snapshot reaches, which in a big repository is
tens of millions of ids: ``UsedSet`` keeps them in a sorted run file on local disk, and
``pack_usage`` joins it with the local index (both sorted by blob id) in one pass.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from hometier.engine.trees import TreeCache
from hometier.repo import BlobId, Repository
from hometier.repo.runs import Run, RunBuilder
from hometier.repo.snapshot import Snapshot

PAD = bytes(18)


class UsedSet:
    """Blob ids on local disk, sorted; add everything, then ``seal``, then look up."""

    def __init__(self, folder: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(dir=folder, prefix="used-")
        self._builder: RunBuilder | None = RunBuilder(self._tmp.name)
        self._run: Run | None = None

    def add(self, ids: Iterable[bytes]) -> None:
        assert self._builder is not None
        self._builder.extend([bytes(b) + PAD for b in ids])

    def seal(self) -> None:
        assert self._builder is not None
        path = os.path.join(self._tmp.name, "used.run")
        with self._builder as b:
            b.finish(path)
        self._builder = None
        self._run = Run(path)

    def __contains__(self, bid: object) -> bool:
        assert self._run is not None
        return isinstance(bid, bytes) and bool(self._run.find(bid))

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Distinct ids in order."""
        assert self._run is not None
        last = b""
        for rec in self._run:
            bid = rec[:32]
            if bid != last:
                last = bid
                yield bid

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
        if self._builder is not None:
            self._builder.close()
        self._tmp.cleanup()


def used_blobs(
    repo: Repository, snaps: list[Snapshot], folder: str, *, workers: int = 4
) -> tuple[UsedSet, int]:
    """Every blob (trees and data) the snapshots reach; returns it and the tree count.

    Snapshots are walked one at a time through their locators; a tree already walked
    for an earlier snapshot is skipped with everything below it, so memory holds one
    snapshot's trees plus the ids of the trees seen.
    """
    used = UsedSet(folder)
    seen: set[bytes] = set()
    try:
        for snap in snaps:
            trees = TreeCache(repo.for_snapshot(snap), [snap.tree], workers=workers, skip=seen)
            for tid in trees.ids():
                seen.add(tid)
                ids: list[bytes] = [tid]
                for n in trees.nodes(BlobId(tid)):
                    ids.extend(n.content)
                used.add(ids)
            del trees
        used.seal()
    except BaseException:
        used.close()
        raise
    return used, len(seen)


@dataclass
class PackUsage:
    """Per pack number: used entries and bytes; ``unsafe``: used blobs of a marked pack
    that have no copy in an unmarked pack (deleting the pack would lose them)."""

    used: dict[int, int] = field(default_factory=dict)
    used_bytes: dict[int, int] = field(default_factory=dict)
    unsafe: dict[int, int] = field(default_factory=dict)


def pack_usage(repo: Repository, used: UsedSet, marked: set[int]) -> PackUsage:
    """Join the used ids with the local index, both in blob id order, in one pass."""
    out = PackUsage()
    it = iter(used)
    want = next(it, None)
    group: list[tuple[int, int]] = []
    gid = b""

    def close_group() -> None:
        if not group:
            return
        covered = any(no not in marked for no, _ in group)
        for no, stored in group:
            out.used[no] = out.used.get(no, 0) + 1
            out.used_bytes[no] = out.used_bytes.get(no, 0) + stored
            if not covered:
                out.unsafe[no] = out.unsafe.get(no, 0) + 1

    for bid, no, stored in repo.blobs.scan():
        if bid != gid:
            close_group()
            group = []
            gid = bid
            while want is not None and want < bid:
                want = next(it, None)
        if want is not None and want == bid:
            group.append((no, stored))
    close_group()
    return out
