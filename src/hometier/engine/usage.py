"""Which blobs the snapshots use, and how much of each pack that is, in bounded memory.

Prune needs the set of every blob some snapshot reaches, which in a big repository is
tens of millions of ids: ``UsedSet`` keeps them in a sorted run file on local disk, and
``pack_usage`` joins it with the local index (both sorted by blob id) in one pass.
What one snapshot reaches never changes, so it is walked once and then read from a
local summary (``usedcache``): a prune walks only the snapshots it has not seen.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier.engine.trees import MAX_TREES
from hometier.engine.usedcache import SummaryCache
from hometier.errors import IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.runs import Run, RunBuilder
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import decode_tree
from hometier.store import ObjectNotFound

PAD = bytes(18)
MEMO_BYTES = 64 * 1024 * 1024
_SID = re.compile(r"^[0-9a-f]{64}$")


class UsedSet:
    """Blob ids on local disk, sorted; add everything, then ``seal``, then look up."""

    def __init__(self, folder: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(dir=folder, prefix="used-")
        self._builder: RunBuilder | None = RunBuilder(self._tmp.name)
        self._run: Run | None = None

    def add(self, ids: Iterable[bytes]) -> None:
        assert self._builder is not None
        self._builder.extend([bytes(b) + PAD for b in ids])

    def add_joined(self, data: bytes) -> None:
        """Add ids given as one string of concatenated 32-byte ids."""
        assert self._builder is not None
        self._builder.extend([data[i : i + 32] + PAD for i in range(0, len(data), 32)])

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


@dataclass
class Walked:
    """What finding the used blobs cost: snapshots counted, and of them how many were
    walked from their trees (the others came from the summary cache); trees read."""

    snapshots: int = 0
    walked: int = 0
    trees: int = 0
    refused: int = 0
    """Cache entries that did not verify (walked again)."""


class Memo:
    """Folders already read in this prune: tree id -> (subtree ids, data blob ids
    joined). Snapshots of one user share most of their trees, so walking them one
    after the other reads each shared tree once; bounded by ``MEMO_BYTES``."""

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[tuple[bytes, ...], bytes]] = {}
        self.size = 0

    def get(self, tid: bytes) -> tuple[tuple[bytes, ...], bytes] | None:
        return self.entries.get(tid)

    def put(self, tid: bytes, entry: tuple[tuple[bytes, ...], bytes]) -> None:
        cost = 120 + 32 * len(entry[0]) + len(entry[1])
        if self.size + cost > MEMO_BYTES:
            self.entries.clear()
            self.size = 0
        self.entries[tid] = entry
        self.size += cost


def reach(
    repo: Repository, snap: Snapshot, memo: Memo, *, workers: int = 4
) -> tuple[list[bytes], int]:
    """Every blob (trees and data) one snapshot reaches, sorted and distinct, and how
    many trees were fetched. Trees are read through the snapshot's locator, level by
    level, each verified against its id and validated (``decode_tree``)."""
    view = repo.for_snapshot(snap)
    out: set[bytes] = set()
    seen: set[bytes] = {bytes(snap.tree)}
    level: list[bytes] = [bytes(snap.tree)]
    fetched = 0
    lock = threading.Lock()
    while level:
        cur: dict[bytes, tuple[tuple[bytes, ...], bytes]] = {}
        for t in level:
            hit = memo.get(t)
            if hit is not None:
                cur[t] = hit
        need = [BlobId(t) for t in level if t not in cur]
        if need:
            raw: dict[bytes, bytes] = {}

            def keep(bid: BlobId, data: bytes, raw: dict[bytes, bytes] = raw) -> None:
                with lock:
                    raw[bytes(bid)] = data

            view.for_each_blob(need, keep, workers=workers)
            for tid, data in raw.items():
                nodes = decode_tree(data)
                subs = tuple(bytes(n.subtree) for n in nodes if n.subtree is not None)
                content = b"".join(b"".join(n.content) for n in nodes)
                cur[tid] = (subs, content)
                memo.put(tid, cur[tid])
            fetched += len(raw)
        nxt: list[bytes] = []
        for t in level:
            subs, content = cur[t]
            out.add(t)
            out.update(content[i : i + 32] for i in range(0, len(content), 32))
            for sub in subs:
                if sub not in seen:
                    seen.add(sub)
                    nxt.append(sub)
        if len(seen) > MAX_TREES:
            raise IntegrityError("snapshot holds more trees than hometier will load")
        level = nxt
    return sorted(out), fetched


def used_blobs(
    repo: Repository,
    keys: list[str],
    folder: str,
    *,
    workers: int = 4,
    cache: SummaryCache | None = None,
) -> tuple[UsedSet, Walked]:
    """Every blob (trees and data) the snapshots named by ``keys`` reach.

    A snapshot whose summary ``cache`` holds (verified in full) costs reading that
    local file; any other is read from the bucket and walked (``reach``), and its
    summary is cached for the next prune. A snapshot document that vanished since the
    listing was forgotten meanwhile and counts for nothing; one that does not match its
    name raises ``IntegrityError`` (prune then deletes nothing). Memory: the summary
    being added, one snapshot's blob ids while it is walked, and the bounded memo.
    """
    used = UsedSet(folder)
    walked = Walked()
    try:
        misses: list[str] = []
        for key in keys:
            sid = key.rsplit("/", 1)[-1]
            slices = cache.read(sid) if cache is not None and _SID.match(sid) else None
            if slices is None:
                misses.append(key)
                continue
            walked.snapshots += 1
            for data in slices:
                used.add_joined(data)
        snaps = _load(repo, misses, workers)
        memo = Memo()
        for snap in sorted(snaps, key=lambda s: (s.user, s.time_ns, s.id)):
            ids, fetched = reach(repo, snap, memo, workers=workers)
            used.add(ids)
            walked.snapshots += 1
            walked.walked += 1
            walked.trees += fetched
            if cache is not None:
                cache.write(snap.id, ids)
        used.seal()
    except BaseException:
        used.close()
        raise
    walked.refused = cache.rejected if cache is not None else 0
    return used, walked


def _load(repo: Repository, keys: list[str], workers: int) -> list[Snapshot]:
    if not keys:
        return []

    def load(key: str) -> Snapshot | None:
        try:
            return repo._load_snapshot_key(key)
        except ObjectNotFound:
            return None  # forgotten between the listing and the read

    with ThreadPoolExecutor(max_workers=max(1, min(workers * 2, len(keys)))) as pool:
        return [s for s in pool.map(load, keys) if s is not None]


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
