"""Verify one snapshot after writing it, and compare it with the folder it came from.

The lifecycle deletes a home only after ``verify_snapshot`` passed and ``compare_tree``
found no difference: the trees read back from the repository describe exactly what is
on disk, and every blob they name is indexed in a pack that exists.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from hometier.engine.fsutil import Swapped, open_dir
from hometier.engine.trees import TreeCache
from hometier.engine.usedcache import SummaryCache
from hometier.errors import Error, IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.ids import pack_key
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node
from hometier.store import ObjectNotFound

MAX_DIFFS = 20


class VerifyFailed(Error):
    """Snapshot {} did not verify: {}"""

    exit_code = 5


@dataclass
class Difference:
    path: str
    what: str
    folder: bool = False
    """A folder (in the snapshot and on disk) whose own attributes differ."""


@dataclass
class Comparison:
    entries: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differences


def verify_snapshot(
    repo: Repository,
    snap: Snapshot,
    *,
    read_data: bool = False,
    workers: int = 4,
    summaries: SummaryCache | None = None,
) -> TreeCache:
    """Read the snapshot's trees back from the repository (each checked against its hash),
    check that every blob is indexed and every pack it lives in exists with the indexed
    size; with ``read_data`` also fetch and hash every data blob. Returns the trees.
    Raises ``VerifyFailed``.

    With ``summaries``, a snapshot that verified gets its entry there: every tree and
    data blob it reaches, taken from the trees just read back from the bucket (not from
    what the backup meant to write), the same set ``usage.reach`` finds. The next prune
    then reads that file instead of the snapshot's trees.
    """
    try:
        repo = repo.for_snapshot(snap, strict=True)  # its locator must name every blob
        trees = TreeCache(repo, [snap.tree], workers=workers)
        blobs: set[bytes] = set()
        for tid in trees.ids():
            for n in trees.nodes(BlobId(tid)):
                blobs.update(n.content)
        located = {repo.locate(BlobId(b)).pack for b in [*trees.ids(), *map(BlobId, blobs)]}
        sizes = repo.pack_sizes()  # after locating: the locator may have been re-read
        packs: dict[bytes, int] = {pid: sizes.get(pid, -1) for pid in located}
        for pid, size in packs.items():
            try:
                have = repo.store.head(pack_key(pid)).size  # type: ignore[arg-type]
            except ObjectNotFound:
                raise IntegrityError(f"pack {pid.hex()[:16]} is missing") from None
            if size >= 0 and have != size:
                raise IntegrityError(f"pack {pid.hex()[:16]} has {have} bytes, expected {size}")
        if read_data:
            lock = threading.Lock()
            seen = [0]

            def count(_bid: BlobId, _data: bytes) -> None:
                with lock:
                    seen[0] += 1

            repo.for_each_blob([BlobId(b) for b in blobs], count, workers=workers)
            if seen[0] != len(blobs):
                raise IntegrityError(f"read {seen[0]} of {len(blobs)} blobs")
    except VerifyFailed:
        raise
    except Error as exc:
        raise VerifyFailed(snap.id[:12], exc.get_message()) from exc
    if summaries is not None:
        summaries.write(snap.id, sorted({*map(bytes, trees.ids()), *map(bytes, blobs)}))
    return trees


def compare_tree(
    trees: TreeCache,
    snap: Snapshot,
    path: str | os.PathLike[str] | int,
    *,
    moved_top: bool = False,
    identity: bool = True,
    busy: Mapping[int, int] | None = None,
    limit: int = MAX_DIFFS,
    descend: bool = False,
) -> Comparison:
    """Compare the folder at ``path`` (or the open folder descriptor ``path``) with the
    snapshot, attribute by attribute.

    A file counts as unchanged when type, size, mode, owner, mtime, ctime and inode are
    what the snapshot recorded (ctime catches writes that restore mtime). Entries added
    or removed, and entries the snapshot skipped (sockets, mounts) that still exist, are
    differences too, except skipped ones the snapshot listed. Stops after ``limit``.
    ``moved_top``: the top-level entries were renamed one by one since the snapshot,
    which changes their ctime (Linux), so ctime is not compared for them.
    ``identity=False`` compares content attributes only (type, size, mode, owner, mtime),
    not inode and ctime: for files that a restore wrote (new inodes, new ctimes).
    ``busy`` (inode → process, from ``lifecycle.inuse``): an entry, or the folder itself,
    that a process holds open is a difference ("in use"). ``descend``: go on into a
    folder whose own attributes differ (to list every file that does).

    The walk is by descriptor: every folder is opened relative to its parent without
    following a link, and must be the folder just listed.
    """
    cmp = Comparison()
    if isinstance(path, int):
        top_fd = os.dup(path)
    else:
        try:
            top_fd = open_dir(os.fsencode(path))
        except FileNotFoundError:
            cmp.differences.append(Difference("", "the folder is gone"))
            return cmp
    top = os.fstat(top_fd)
    if busy and top.st_ino in busy:
        cmp.differences.append(Difference("", f"in use by process {busy[top.st_ino]}"))
    skipped = {s.split(": ", 1)[0] for s in snap.stats.skipped}
    # Frames: (folder fd, its subfolders still to visit: (name, rel, stat, subtree)).
    stack: list[tuple[int, Iterator[tuple[bytes, bytes, os.stat_result, BlobId]]]] = []
    try:
        walk = _Walk(trees, cmp, skipped, top.st_dev, moved_top, identity, busy, limit, descend)
        subs = walk.folder(snap.tree, top_fd, b"")
        stack.append((top_fd, iter(subs)))
        while stack and len(cmp.differences) < limit:
            fd, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                os.close(fd)
                stack.pop()
                continue
            name, rel, st, subtree = nxt
            try:
                cfd = open_dir(name, fd, expect=st)
            except (OSError, Swapped) as exc:
                what = "replaced while compared" if isinstance(exc, Swapped) else "removed"
                if not isinstance(exc, FileNotFoundError | Swapped):
                    what = f"unreadable: {exc.strerror}"
                cmp.differences.append(Difference(os.fsdecode(rel), what))
                continue
            subs = walk.folder(subtree, cfd, rel)
            stack.append((cfd, iter(subs)))
    finally:
        for fd, _p in stack:
            os.close(fd)
    return cmp


@dataclass
class _Walk:
    """One comparison's settings and findings (see ``compare_tree``)."""

    trees: TreeCache
    cmp: Comparison
    skipped: set[str]
    dev: int
    moved_top: bool
    identity: bool
    busy: Mapping[int, int] | None
    limit: int
    descend: bool

    def folder(
        self, tid: BlobId, fd: int, rel: bytes
    ) -> list[tuple[bytes, bytes, os.stat_result, BlobId]]:
        """Compare one open folder's entries; returns its subfolders to descend into."""
        return _compare_dir(self, tid, fd, rel)


def _compare_dir(
    w: _Walk, tid: BlobId, fd: int, rel: bytes
) -> list[tuple[bytes, bytes, os.stat_result, BlobId]]:
    trees, cmp, skipped, dev = w.trees, w.cmp, w.skipped, w.dev
    moved_top, identity, busy, limit, descend = w.moved_top, w.identity, w.busy, w.limit, w.descend
    want = {n.name: n for n in trees.nodes(tid)}
    try:
        with os.scandir(fd) as it:
            have = {os.fsencode(e.name) for e in it}
    except OSError as exc:
        cmp.differences.append(Difference(os.fsdecode(rel), f"unreadable: {exc.strerror}"))
        return []
    subs: list[tuple[bytes, bytes, os.stat_result, BlobId]] = []
    for name in sorted(have - want.keys()):
        sub = rel + b"/" + name if rel else name
        if os.fsdecode(sub) not in skipped:
            cmp.differences.append(Difference(os.fsdecode(sub), "added"))
    for name, node in want.items():
        if len(cmp.differences) >= limit:
            break
        sub = rel + b"/" + name if rel else name
        cmp.entries += 1
        if name not in have:
            cmp.differences.append(Difference(os.fsdecode(sub), "removed"))
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            cmp.differences.append(Difference(os.fsdecode(sub), "removed"))
            continue
        # Renaming a top-level entry changes its ctime, and so the ctime of every
        # other name of the same inode (a hardlink deeper down) too.
        moved = moved_top and (not rel or st.st_nlink > 1)
        what = _differs(node, st, ctime=identity and not moved, inode=identity)
        if what is None and busy and st.st_dev == dev and st.st_ino in busy:
            what = f"in use by process {busy[st.st_ino]}"
        both_dirs = node.type == "dir" and stat.S_ISDIR(st.st_mode)
        if what:
            cmp.differences.append(Difference(os.fsdecode(sub), what, folder=both_dirs))
        if (
            (not what or (descend and both_dirs and not what.startswith("in use")))
            and node.type == "dir"
            and node.subtree is not None
            and st.st_dev == dev
        ):
            subs.append((name, sub, st, node.subtree))
    return subs


_TYPES = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
}


def _differs(n: Node, st: os.stat_result, ctime: bool = True, inode: bool = True) -> str | None:
    if stat.S_IFMT(st.st_mode) != _TYPES[n.type]:
        return "type changed"
    if n.type == "file" and n.link is None and st.st_size != n.size:
        return "size changed"
    if stat.S_IMODE(st.st_mode) != n.mode or (st.st_uid, st.st_gid) != (n.uid, n.gid):
        return "permissions or owner changed"
    if st.st_mtime_ns != n.mtime_ns:
        return "modified"
    if (inode and st.st_ino != n.ino) or (ctime and st.st_ctime_ns != n.ctime_ns):
        return "changed (ctime or inode)"
    return None
