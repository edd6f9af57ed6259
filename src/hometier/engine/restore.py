"""``restore``: unpack a snapshot into an empty or absent folder, all or nothing."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hometier.engine.trees import TreeCache
from hometier.errors import Conflict, Error, IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node

log = logging.getLogger(__name__)

STAGING_PREFIX = ".hometier-restore-"
MAX_NODES = 20_000_000
MAX_DEPTH = 1000
XATTR_PREFIX = b"user."


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


ProgressFn = Callable[[RestoreProgress], None]


@dataclass(slots=True)
class _File:
    path: bytes
    node: Node


class _Plan:
    """Everything a restore will create, built while walking the trees."""

    def __init__(self) -> None:
        self.files: list[_File] = []
        self.dirs: list[tuple[bytes, Node]] = []
        self.specials: list[tuple[bytes, Node]] = []
        self.links: list[tuple[bytes, bytes, Node]] = []
        self.dest: dict[bytes, list[tuple[int, int]]] = {}
        self.regular: set[bytes] = set()
        self.count = 0


def _check_target(target: bytes) -> bool:
    """True if ``target`` exists (and is an empty real folder); raise if unusable."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise TargetNotEmpty(os.fsdecode(target), "it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise TargetNotEmpty(os.fsdecode(target), "it is not a folder")
    names = [n for n in os.listdir(target) if not n.startswith(STAGING_PREFIX.encode())]
    if names:
        shown = ", ".join(os.fsdecode(n) for n in sorted(names)[:3])
        raise TargetNotEmpty(os.fsdecode(target), f"it holds {shown}")
    return True


def _plan(repo: Repository, trees: TreeCache, root: BlobId, staging: bytes) -> _Plan:
    plan = _Plan()
    stack: list[tuple[BlobId, bytes, bytes, int]] = [(root, staging, b"", 0)]
    while stack:
        tid, path, rel, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise IntegrityError(f"snapshot nests deeper than {MAX_DEPTH} folders")
        for n in trees.nodes(tid):
            plan.count += 1
            if plan.count > MAX_NODES:
                raise IntegrityError(f"snapshot holds more than {MAX_NODES} entries")
            full = path + b"/" + n.name
            sub = rel + b"/" + n.name if rel else n.name
            if n.type == "dir":
                assert n.subtree is not None
                os.mkdir(full, 0o700)
                plan.dirs.append((full, n))
                stack.append((n.subtree, full, sub, depth + 1))
            elif n.type == "file" and n.link is not None:
                plan.links.append((full, n.link, n))
            elif n.type == "file":
                _plan_file(repo, plan, full, sub, n)
            else:
                plan.specials.append((full, n))
    return plan


def _plan_file(repo: Repository, plan: _Plan, full: bytes, rel: bytes, n: Node) -> None:
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if n.sparse is not None:
            os.ftruncate(fd, n.size)
    finally:
        os.close(fd)
    idx = len(plan.files)
    plan.files.append(_File(full, n))
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
        plan.dest.setdefault(bid, []).append((idx, pos))
        pos += length
        left -= length
    if left != 0 or ext_i + 1 < len(extents) and any(ln for _, ln in extents[ext_i + 1 :]):
        raise IntegrityError(f"content of {os.fsdecode(rel)} is shorter than its declared size")


def _set_meta(path: bytes, n: Node, *, as_root: bool, symlink: bool = False) -> None:
    if as_root:
        os.chown(path, n.uid, n.gid, follow_symlinks=not symlink)
    if not symlink:
        os.chmod(path, n.mode)
        for name, value in (n.xattrs or {}).items():
            if name.startswith(XATTR_PREFIX):
                os.setxattr(path, name, value, follow_symlinks=False)
    os.utime(path, ns=(n.atime_ns, n.mtime_ns), follow_symlinks=not symlink)


def restore(
    repo: Repository,
    snap: Snapshot,
    target: str | os.PathLike[str],
    *,
    workers: int = 4,
    progress: ProgressFn | None = None,
) -> RestoreStats:
    """Restore ``snap`` into ``target``, which must be absent or an empty folder.

    Writes into a staging folder on the same filesystem (inside ``target`` when it
    exists, beside it otherwise), verifies every blob against its hash, sets file then
    directory metadata, and only then moves the result into place. On any failure the
    staging folder is removed, ``target`` is left as it was and ``RestoreError`` (or
    ``TargetNotEmpty`` before anything was written) is raised. Never follows a symlink:
    names are checked by the tree decoder and every file is created with ``O_EXCL``.
    """
    started = time.monotonic()
    tgt = os.fsencode(os.path.abspath(target))
    exists = _check_target(tgt)
    token = secrets.token_hex(4)
    if exists:
        staging = tgt + b"/" + STAGING_PREFIX.encode() + token.encode()
    else:
        parent, name = os.path.split(tgt)
        os.makedirs(parent, exist_ok=True)
        staging = parent + b"/" + STAGING_PREFIX.encode() + name + b"-" + token.encode()
    os.mkdir(staging, 0o700)
    as_root = os.geteuid() == 0
    stats = RestoreStats()
    try:
        repo.load_index()
        trees = TreeCache(repo, [snap.tree], workers=workers)
        plan = _plan(repo, trees, snap.tree, staging)
        _write_contents(repo, plan, stats, workers, progress)
        _finish(plan, staging, stats, as_root)
        root = Node(name=b"root", type="dir")
        r = snap.root
        root.mode, root.uid, root.gid = r.get("mode", 0o700), r.get("uid", 0), r.get("gid", 0)
        root.mtime_ns, root.atime_ns = r.get("mtime", 0), r.get("atime", 0)
        if exists:
            for name in os.listdir(staging):
                os.rename(staging + b"/" + name, tgt + b"/" + name)
            os.rmdir(staging)
            _set_meta(tgt, root, as_root=as_root)
        else:
            _set_meta(staging, root, as_root=as_root)
            os.rename(staging, tgt)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, TargetNotEmpty | KeyboardInterrupt):
            raise
        detail = exc.get_message() if isinstance(exc, Error) else _describe(exc)
        raise RestoreError(snap.id[:12], os.fsdecode(tgt), detail) from exc
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device holding the home"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({os.fsdecode(exc.filename) if exc.filename else ''})"
    return str(exc) or type(exc).__name__


def _write_contents(
    repo: Repository, plan: _Plan, stats: RestoreStats, workers: int, progress: ProgressFn | None
) -> None:
    prog = RestoreProgress(files_total=len(plan.files))
    for bid in plan.dest:
        prog.bytes_total += repo.locate(BlobId(bid)).raw_len * len(plan.dest[bid])
    lock = threading.Lock()
    last = [0.0]

    def write(bid: BlobId, data: bytes) -> None:
        for idx, off in plan.dest[bid]:
            fd = os.open(plan.files[idx].path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, off)
                    view = view[n:]
                    off += n
            finally:
                os.close(fd)
        with lock:
            stats.blobs += 1
            prog.bytes_done += len(data) * len(plan.dest[bid])
            now = time.monotonic()
            if progress is not None and now - last[0] >= 0.2:
                last[0] = now
                progress(prog)

    repo.for_each_blob([BlobId(b) for b in plan.dest], write, workers=workers)
    if progress is not None:
        progress(prog)


def _finish(plan: _Plan, staging: bytes, stats: RestoreStats, as_root: bool) -> None:
    for f in plan.files:
        _set_meta(f.path, f.node, as_root=as_root)
        stats.files += 1
        stats.bytes += f.node.size
    for full, link, _n in plan.links:
        # ``link`` is relative to the snapshot root and must name a regular file this
        # restore created: never an arbitrary path, never through a symlink.
        if link not in plan.regular:
            raise IntegrityError(f"hardlink {os.fsdecode(full)} points at a file not restored")
        os.link(staging + b"/" + link, full, follow_symlinks=False)
        stats.files += 1
    for full, n in plan.specials:
        if n.type == "symlink":
            assert n.target is not None
            os.symlink(n.target, full)
            _set_meta(full, n, as_root=as_root, symlink=True)
            stats.symlinks += 1
            continue
        kind = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK}[n.type]
        dev = os.makedev(*n.rdev) if n.rdev else 0
        try:
            os.mknod(full, 0o600 | kind, dev)
        except PermissionError:
            stats.skipped.append(f"{os.fsdecode(full)}: device nodes need root")
            continue
        _set_meta(full, n, as_root=as_root)
        stats.others += 1
    for full, n in reversed(plan.dirs):
        _set_meta(full, n, as_root=as_root)
        stats.dirs += 1
