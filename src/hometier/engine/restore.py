"""``restore``: unpack a snapshot into an empty or absent folder, all or nothing.

Every filesystem call is made relative to an open descriptor of the staging folder
(``dir_fd``), never by re-resolving a path from ``/``: the staging folder may sit inside
a home its user can write to, and a user who swaps it for a symlink must not make a root
restore write, chown or chmod anything outside it. The staging folder is root's own
(0700) until the end, so nobody else can touch what is inside while it is built.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import struct
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier.engine.fsutil import remove_tree, rename_noreplace
from hometier.engine.trees import TreeCache
from hometier.errors import Conflict, Error, IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node

log = logging.getLogger(__name__)

STAGING_PREFIX = ".hometier-restore-"
CONFLICTS_PREFIX = "hometier-conflicts-"
MAX_NODES = 20_000_000
MAX_DEPTH = 1000
XATTR_PREFIX = b"user."
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreError(Error):
    """Restore of snapshot {} into {} failed; nothing was changed there: {}"""

    exit_code = 8


class TargetNotEmpty(Conflict):
    """Refusing to restore into {}: it is not an empty folder ({})."""


@dataclass
class RestoreProgress:
    bytes_total: int = 0
    bytes_done: int = 0
    files_total: int = 0


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    blobs: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    """With ``merge``: names that already existed in the target; the snapshot's
    versions of them were put in ``conflicts_dir`` instead."""
    conflicts_dir: str | None = None


ProgressFn = Callable[[RestoreProgress], None]


_META = struct.Struct("<IIIqqQ")
"""A planned file's metadata, packed: mode, uid, gid, atime, mtime, size."""
_POS = 1 << 63


class _Plan:
    """Everything a restore will create, as paths relative to the staging folder.

    Compact, because a home may hold millions of files: a file is its path and 40 packed
    bytes of metadata (xattrs aside); a blob's destinations are ints ``file << 63 | pos``
    (a list only when the same content lands in several places).
    """

    def __init__(self) -> None:
        self.files: list[tuple[bytes, bytes]] = []
        self.left = array("Q")
        """Per file: blobs still to be written (the one that writes the last finishes it)."""
        self.created: set[int] = set()
        """Files made in the plan: sparse ones and those of several blobs. The others are
        created by the worker that brings their only blob (or, if empty, at the end)."""
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.dirs: list[tuple[bytes, Node]] = []
        self.specials: list[tuple[bytes, Node]] = []
        self.links: list[tuple[bytes, bytes]] = []
        self.dest: dict[bytes, int | list[int]] = {}
        self.regular: set[bytes] = set()
        self.count = 0

    def add_dest(self, bid: bytes, idx: int, pos: int) -> None:
        value = idx * _POS + pos
        old = self.dest.get(bid)
        if old is None:
            self.dest[bid] = value
        elif isinstance(old, int):
            self.dest[bid] = [old, value]
        else:
            old.append(value)

    def dests(self, bid: bytes) -> list[tuple[int, int]]:
        v = self.dest[bid]
        return [divmod(x, _POS) for x in ([v] if isinstance(v, int) else v)]


def _check_target(target: bytes, merge: bool, ignore: tuple[bytes, ...] = ()) -> bool:
    """True if ``target`` exists (an empty real folder, or any folder with ``merge``)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise TargetNotEmpty(os.fsdecode(target), "it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise TargetNotEmpty(os.fsdecode(target), "it is not a folder")
    names = [
        n
        for n in os.listdir(target)
        if not n.startswith(STAGING_PREFIX.encode()) and n not in ignore
    ]
    if names and not merge:
        shown = ", ".join(repr(os.fsdecode(n)) for n in sorted(names)[:3])
        raise TargetNotEmpty(os.fsdecode(target), f"it holds {shown}")
    return True


def _open_staging(parent_fd: int, name: bytes) -> int:
    """Create and open a fresh staging folder, and prove it is ours."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, _DIR, dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise RestoreError("-", os.fsdecode(name), "the staging folder was tampered with")
    return fd


def _clean_stale(parent_fd: int, prefix: bytes) -> None:
    """Remove staging folders a crashed restore left behind (only our own)."""
    for name in map(os.fsencode, os.listdir(parent_fd)):
        if not name.startswith(prefix):
            continue
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            log.warning("removing a restore left unfinished: %s", os.fsdecode(name))
            remove_tree(name, parent_fd)


def _plan(repo: Repository, trees: TreeCache, root: BlobId, sfd: int) -> _Plan:
    plan = _Plan()
    stack: list[tuple[BlobId, bytes, int]] = [(root, b"", 0)]
    while stack:
        tid, rel, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise IntegrityError(f"snapshot nests deeper than {MAX_DEPTH} folders")
        for n in trees.nodes(tid, consume=True):
            plan.count += 1
            if plan.count > MAX_NODES:
                raise IntegrityError(f"snapshot holds more than {MAX_NODES} entries")
            sub = rel + b"/" + n.name if rel else n.name
            if n.type == "dir":
                assert n.subtree is not None
                os.mkdir(sub, 0o700, dir_fd=sfd)
                plan.dirs.append((sub, n))
                stack.append((n.subtree, sub, depth + 1))
            elif n.type == "file" and n.error is not None:
                plan.count -= 1
            elif n.link is not None:
                plan.links.append((sub, n.link))
            elif n.type == "file":
                _plan_file(repo, plan, sfd, sub, n)
            else:
                plan.specials.append((sub, n))
    return plan


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _plan_file(repo: Repository, plan: _Plan, sfd: int, rel: bytes, n: Node) -> None:
    idx = len(plan.files)
    if n.sparse is not None or len(n.content) > 1:
        # Several writers (or holes): the file must exist before any of them runs.
        fd = os.open(rel, _CREATE, 0o600, dir_fd=sfd)
        try:
            if n.sparse is not None:
                os.ftruncate(fd, n.size)
        finally:
            os.close(fd)
        plan.created.add(idx)
    plan.files.append((rel, _META.pack(n.mode, n.uid, n.gid, n.atime_ns, n.mtime_ns, n.size)))
    plan.left.append(len(n.content))
    if n.xattrs:
        plan.xattrs[idx] = n.xattrs
    plan.regular.add(rel)
    extents = n.sparse if n.sparse is not None else [(0, n.size)]
    ext_i, pos, left = 0, 0, 0
    if extents:
        pos, left = extents[0]
    for bid in n.content:
        length = repo.locate(bid).raw_len
        while left == 0 and ext_i + 1 < len(extents):
            ext_i += 1
            pos, left = extents[ext_i]
        if length > left:
            raise IntegrityError(f"content of {os.fsdecode(rel)} does not fit its declared size")
        plan.add_dest(bid, idx, pos)
        pos += length
        left -= length
    if left != 0 or any(ln for _, ln in extents[ext_i + 1 :]):
        raise IntegrityError(f"content of {os.fsdecode(rel)} is shorter than its declared size")


def _set_meta(sfd: int, rel: bytes, n: Node, *, as_root: bool, symlink: bool = False) -> None:
    """Owner, xattrs, mode, then times (chown clears setuid bits; chmod may forbid xattrs)."""
    if as_root:
        os.chown(rel, n.uid, n.gid, dir_fd=sfd, follow_symlinks=False)
    if not symlink:
        if n.xattrs:
            flags = _DIR if n.type == "dir" else os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            if n.type in ("fifo", "chr", "blk"):
                flags |= os.O_NONBLOCK | os.O_PATH
            fd = os.open(rel, flags, dir_fd=sfd)
            try:
                for name, value in n.xattrs.items():
                    if name.startswith(XATTR_PREFIX):
                        os.setxattr(fd, name, value)
            finally:
                os.close(fd)
        os.chmod(rel, n.mode, dir_fd=sfd)
    os.utime(rel, ns=(n.atime_ns, n.mtime_ns), dir_fd=sfd, follow_symlinks=False)


def _set_file_meta(fd: int, plan: _Plan, idx: int, *, as_root: bool) -> None:
    """A regular file's owner, xattrs, mode, then times, through its open descriptor."""
    mode, uid, gid, atime, mtime, _size = _META.unpack(plan.files[idx][1])
    if as_root:
        os.fchown(fd, uid, gid)
    xattrs = plan.xattrs.get(idx)
    if xattrs:
        for name, value in xattrs.items():
            if name.startswith(XATTR_PREFIX):
                os.setxattr(fd, name, value)
    os.fchmod(fd, mode)
    os.utime(fd, ns=(atime, mtime))


def _set_root_meta(fd: int, snap: Snapshot, as_root: bool) -> None:
    r = snap.root
    if as_root:
        os.chown(fd, r.get("uid", 0), r.get("gid", 0))
    for name, value in snap.root_xattrs.items():
        if name.startswith(XATTR_PREFIX):
            os.setxattr(fd, name, value)
    os.chmod(fd, r.get("mode", 0o700))
    os.utime(fd, ns=(r.get("atime", 0), r.get("mtime", 0)))


def restore(
    repo: Repository,
    snap: Snapshot,
    target: str | os.PathLike[str],
    *,
    workers: int = 4,
    progress: ProgressFn | None = None,
    merge: bool = False,
) -> RestoreStats:
    """Restore ``snap`` into ``target``, which must be absent or an empty folder.

    Writes into a staging folder on the same filesystem (inside ``target`` when it
    exists, beside it otherwise), verifies every blob against its hash, sets file then
    directory metadata, and only then moves the result into place. On any failure the
    staging folder is removed, ``target`` is left as it was and ``RestoreError`` (or
    ``TargetNotEmpty`` before anything was written) is raised. Never follows a symlink:
    names are checked by the tree decoder, every file is created with ``O_EXCL`` and
    every call is relative to the staging folder's descriptor.

    With ``merge`` the target may hold files: nothing in it is overwritten; a top-level
    entry of the snapshot whose name is taken goes into ``hometier-conflicts-<id>/``
    in the target instead, and is listed in ``stats.conflicts``.
    """
    started = time.monotonic()
    tgt = os.fsencode(os.path.abspath(target))
    exists = _check_target(tgt, merge)
    token = secrets.token_hex(4).encode()
    try:
        if exists:
            parent_fd = os.open(tgt, _DIR)
            prefix = STAGING_PREFIX.encode()
        else:
            # The folder above the target is the operator's (often /home, itself
            # sometimes a symlink): follow it; the target itself is never a symlink.
            parent, name = os.path.split(tgt)
            os.makedirs(parent, exist_ok=True)
            parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            prefix = STAGING_PREFIX.encode() + name[:128] + b"-"  # stays under NAME_MAX
    except OSError as exc:
        raise RestoreError(snap.id[:12], os.fsdecode(tgt), _describe(exc)) from exc
    as_root = os.geteuid() == 0
    stats = RestoreStats()
    staging = prefix + token
    sfd = -1
    try:
        _clean_stale(parent_fd, prefix)
        sfd = _open_staging(parent_fd, staging)
        try:
            repo = repo.for_snapshot(snap)  # blobs are found through its locator
            trees = TreeCache(repo, [snap.tree], workers=workers)
            plan = _plan(repo, trees, snap.tree, sfd)
            _write_contents(repo, plan, sfd, stats, workers, progress, as_root)
            _finish(plan, sfd, stats, as_root)
            if exists:
                _move_into(sfd, parent_fd, staging, snap, stats, tgt)
                _set_root_meta(parent_fd, snap, as_root)
            else:
                _set_root_meta(sfd, snap, as_root)
                rename_noreplace(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException as exc:
            remove_tree(staging, parent_fd)
            if isinstance(exc, KeyboardInterrupt):
                raise
            detail = exc.get_message() if isinstance(exc, Error) else _describe(exc)
            raise RestoreError(snap.id[:12], os.fsdecode(tgt), detail) from exc
    finally:
        if sfd >= 0:
            os.close(sfd)
        os.close(parent_fd)
    stats.seconds = time.monotonic() - started
    log.info(
        "restored snapshot %s into %s: %d files, %d bytes in %.1fs",
        snap.id[:12],
        os.fsdecode(tgt),
        stats.files,
        stats.bytes,
        stats.seconds,
    )
    return stats


def _move_into(
    sfd: int, tfd: int, staging: bytes, snap: Snapshot, stats: RestoreStats, tgt: bytes
) -> None:
    """Move staged entries into an existing target, never replacing what is there."""
    conflicts = b""
    for name in sorted(map(os.fsencode, os.listdir(sfd))):
        try:
            rename_noreplace(name, name, src_dir_fd=sfd, dst_dir_fd=tfd)
        except FileExistsError:
            if not conflicts:
                conflicts = _make_conflicts_dir(tfd, snap)
            rename_noreplace(name, conflicts + b"/" + name, src_dir_fd=sfd, dst_dir_fd=tfd)
            stats.conflicts.append(os.fsdecode(name))
    if stats.conflicts:
        stats.conflicts_dir = os.fsdecode(tgt + b"/" + conflicts)
    os.rmdir(staging, dir_fd=tfd)


def _make_conflicts_dir(tfd: int, snap: Snapshot) -> bytes:
    """A fresh ``hometier-conflicts-<id>[-N]`` folder owned by the home's owner (it holds
    their files), 0700."""
    base = CONFLICTS_PREFIX.encode() + snap.id[:12].encode()
    for n in range(1, 1000):
        name = base if n == 1 else base + b"-%d" % n
        try:
            os.mkdir(name, 0o700, dir_fd=tfd)
        except FileExistsError:
            continue
        if os.geteuid() == 0:
            os.chown(name, snap.root.get("uid", 0), snap.root.get("gid", 0), dir_fd=tfd)
        return name
    raise RestoreError(snap.id[:12], "-", "too many conflicts folders")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device holding the home"
    if isinstance(exc, OSError):
        where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc) or type(exc).__name__


def _write_contents(
    repo: Repository,
    plan: _Plan,
    sfd: int,
    stats: RestoreStats,
    workers: int,
    progress: ProgressFn | None,
    as_root: bool,
) -> None:
    """Fetch every blob and write it where it belongs, in the fetch workers.

    A file of one blob is created, written and given its metadata with one open by the
    worker that brings the blob (most files of a home); a file of several blobs was
    created by the plan, and the worker that writes its last blob finishes it. Empty
    files are made last, in the same pool. Nothing here follows a link: every name is
    relative to the staging folder and opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when
    created).
    """
    prog = RestoreProgress(files_total=len(plan.files))
    for bid, dests in plan.dest.items():
        copies = 1 if isinstance(dests, int) else len(dests)
        prog.bytes_total += repo.locate(BlobId(bid)).raw_len * copies
    lock = threading.Lock()
    last = [0.0]
    left = plan.left
    created = plan.created
    empty = [i for i, n in enumerate(left) if n == 0]

    def write(bid: BlobId, data: bytes) -> None:
        targets = plan.dests(bid)
        for idx, off in targets:
            rel = plan.files[idx][0]
            if idx in created:
                fd = os.open(rel, _REOPEN, dir_fd=sfd)
            else:
                fd = os.open(rel, _CREATE, 0o600, dir_fd=sfd)
            try:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, off)
                    view = view[n:]
                    off += n
                if idx in created:
                    with lock:
                        left[idx] -= 1
                        done = left[idx] == 0
                else:
                    done = True
                if done:
                    _set_file_meta(fd, plan, idx, as_root=as_root)
            finally:
                os.close(fd)
        with lock:
            stats.blobs += 1
            prog.bytes_done += len(data) * len(targets)
            now = time.monotonic()
            if progress is not None and now - last[0] >= 0.2:
                last[0] = now
                progress(prog)

    repo.for_each_blob([BlobId(b) for b in plan.dest], write, workers=workers)

    def finish_empty(batch: list[int]) -> None:
        for idx in batch:
            rel = plan.files[idx][0]
            fd = os.open(rel, _REOPEN if idx in created else _CREATE, 0o600, dir_fd=sfd)
            try:
                _set_file_meta(fd, plan, idx, as_root=as_root)
            finally:
                os.close(fd)

    if empty:
        step = -(-len(empty) // workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
            for f in [
                pool.submit(finish_empty, empty[i : i + step]) for i in range(0, len(empty), step)
            ]:
                f.result()
    if progress is not None:
        progress(prog)


def _finish(plan: _Plan, sfd: int, stats: RestoreStats, as_root: bool) -> None:
    """Special files, hardlinks, then folders' metadata, deepest first (regular files
    were finished by ``_write_contents``)."""
    skipped: set[bytes] = set()
    stats.files += len(plan.files)
    stats.bytes += sum(_META.unpack(meta)[5] for _rel, meta in plan.files)
    for rel, n in plan.specials:
        if n.type == "symlink":
            assert n.target is not None
            os.symlink(n.target, rel, dir_fd=sfd)
            _set_meta(sfd, rel, n, as_root=as_root, symlink=True)
            stats.symlinks += 1
            continue
        kind = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK}[n.type]
        dev = os.makedev(*n.rdev) if n.rdev else 0
        try:
            os.mknod(rel, 0o600 | kind, dev, dir_fd=sfd)
        except PermissionError:
            stats.skipped.append(f"{os.fsdecode(rel)}: device nodes need root")
            skipped.add(rel)
            continue
        _set_meta(sfd, rel, n, as_root=as_root)
        plan.regular.add(rel)
        stats.others += 1
    for rel, link in plan.links:
        # ``link`` is relative to the snapshot root and must name a file or special file
        # this restore created: never an arbitrary path, never through a symlink.
        if link in skipped:
            stats.skipped.append(f"{os.fsdecode(rel)}: a link to a skipped device node")
            continue
        if link not in plan.regular:
            raise IntegrityError(f"hardlink {os.fsdecode(rel)} points at a file not restored")
        os.link(link, rel, src_dir_fd=sfd, dst_dir_fd=sfd, follow_symlinks=False)
        stats.files += 1
    for rel, n in reversed(plan.dirs):
        _set_meta(sfd, rel, n, as_root=as_root)
        stats.dirs += 1
