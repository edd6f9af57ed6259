"""``restore``: unpack a snapshot into an empty or absent folder, all or nothing.

Every filesystem call is made relative to an open descriptor of the staging folder
(``dir_fd``), never by re-resolving a path from ``/``: the staging folder may sit inside
a home its user can write to, and a user who swaps it for a symlink must not make a root
restore write, chown or chmod anything outside it. The staging folder is root's own
(0700) until the end, so nobody else can touch what is inside while it is built. Its
*name* inside a home is the user's to rename or exchange: it is emptied through its
descriptor and removed under whatever name shows its inode (``_drop_staging``).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import secrets
import stat
import struct
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier.cpu import cores
from hometier.engine import writers
from hometier.engine.export import find
from hometier.engine.fsutil import (
    Swapped,
    make_private_dir,
    remove_tree,
    rename_noreplace,
)
from hometier.engine.trees import TreeCache
from hometier.engine.writers import Writers
from hometier.engine.xattrs import apply_metadata
from hometier.errors import Conflict, Error, IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.index import Location
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node

log = logging.getLogger(__name__)

STAGING_PREFIX = ".hometier-restore-"
CONFLICTS_PREFIX = "hometier-conflicts-"
MAX_NODES = 20_000_000
MAX_DEPTH = 1000
MAX_WRITERS = 4
WRITERS_FROM = 2048
"""Forked writers: at most ``MAX_WRITERS``, and one per this many files of one blob.

Below this a restore writes from its fetch threads. A writer forked from the service (a
few hundred MB resident, every page shared copy-on-write until the child exits) costs
more than it saves on a home of a few thousand small files: restores of generated homes
of 400-4,800 files were as fast or 10-15% faster without one, with less CPU, and a
16-home login storm of them 10-15% faster and 10% cheaper; from about 6,000 files (a real
home's site-packages) two writers win."""
DIR_THREADS = 4
DIR_BATCH = 64
"""Folders' metadata: threads, and the fewest folders one of them takes at a time."""
MAX_REPORTED = 200
"""Attributes that could not be restored are listed up to this many, then counted."""
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


class _Lost:
    """Attributes a restore could not put back, collected from every worker thread."""

    def __init__(self, stats: RestoreStats) -> None:
        self.stats = stats
        self.count = 0
        self.lock = threading.Lock()

    def add(self, rel: bytes, what: list[str]) -> None:
        if not what:
            return
        with self.lock:
            for w in what:
                self.count += 1
                if self.count <= MAX_REPORTED:
                    self.stats.skipped.append(f"{os.fsdecode(rel) or '.'}: {w} (not restored)")

    def close(self) -> None:
        if self.count > MAX_REPORTED:
            self.stats.skipped.append(
                f"... and {self.count - MAX_REPORTED} more attributes not restored"
            )


ProgressFn = Callable[[RestoreProgress], None]


_META = struct.Struct("<IIIqqQ")
"""A planned file's metadata, packed: mode, uid, gid, atime, mtime, size."""
_SIZE = struct.Struct("<Q")
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
        self.bytes_total = 0

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

    def check_size(self, idx: int, length: int) -> None:
        """A file of one blob (not sparse): that blob must be exactly the file's size
        (checked when the blob's length is known, before the file is written)."""
        rel, meta = self.files[idx]
        size = _SIZE.unpack_from(meta, _META.size - _SIZE.size)[0]
        if length != size:
            how = "does not fit" if length > size else "is shorter than"
            raise IntegrityError(f"content of {os.fsdecode(rel)} {how} its declared size")


def _open_target(target: bytes, merge: bool, ignore: tuple[bytes, ...] = ()) -> int | None:
    """Open ``target`` (never through a symlink) and check it may receive a restore: an
    empty real folder, or any folder with ``merge``. None if it does not exist."""
    try:
        fd = os.open(target, _DIR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            link = exc.errno == errno.ELOOP or os.path.islink(target)
            why = "it is a symbolic link" if link else "it is not a folder"
            raise TargetNotEmpty(os.fsdecode(target), why) from None
        raise
    try:
        names = [
            n
            for n in map(os.fsencode, os.listdir(fd))
            if not n.startswith(STAGING_PREFIX.encode()) and n not in ignore
        ]
        if names and not merge:
            shown = ", ".join(repr(os.fsdecode(n)) for n in sorted(names)[:3])
            raise TargetNotEmpty(os.fsdecode(target), f"it holds {shown}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_target(target: bytes, merge: bool, ignore: tuple[bytes, ...] = ()) -> bool:
    """True if ``target`` exists (an empty real folder, or any folder with ``merge``)."""
    fd = _open_target(target, merge, ignore)
    if fd is None:
        return False
    os.close(fd)
    return True


def _open_staging(parent_fd: int, name: bytes) -> int:
    """Create and open a fresh staging folder, and prove it is ours (root's, 0700)."""
    try:
        return make_private_dir(name, parent_fd)
    except OSError as exc:
        # Swapped, or (ELOOP, ENOTDIR, ENOENT) renamed or exchanged with a symlink
        # between ``mkdir`` and ``open`` by the user of the folder it is made in.
        if isinstance(exc, Swapped) or exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            for _attempt in range(3):  # ours is empty: rmdir removes nothing else
                try:
                    os.rmdir(name, dir_fd=parent_fd)
                    break
                except OSError:
                    continue
            raise RestoreError(
                "-", os.fsdecode(name), "the staging folder was tampered with"
            ) from None
        raise


def _drop_staging(parent_fd: int, name: bytes, sfd: int) -> None:
    """Remove the staging folder: what is in it through its descriptor, then the folder
    under the name it has now. Inside a home its user cannot enter it but may rename
    it, or exchange its name with a symlink or a folder of theirs (never move it to
    another folder: that needs write access to it): the name is trusted only once it
    shows the folder's inode, and ``rmdir`` removes nothing but an empty folder. Never
    raises; a staging folder that keeps being swapped is left empty (root's, 0700) and
    logged, for the next restore's clean-up."""
    try:
        for entry in map(os.fsencode, os.listdir(sfd)):
            remove_tree(entry, sfd)
        me = os.fstat(sfd)
    except OSError as exc:
        log.warning("could not empty a restore's staging folder: %s", exc)
        return
    for _attempt in range(3):
        names = [name]
        try:
            names += [n for n in map(os.fsencode, os.listdir(parent_fd)) if n != name]
        except OSError:
            pass
        for n in names:
            try:
                st = os.stat(n, dir_fd=parent_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                    os.rmdir(n, dir_fd=parent_fd)
                    return
            except OSError:
                continue  # swapped between stat and rmdir: look again
    log.warning("a restore's staging folder kept being renamed; left it empty")


def _clean_stale(parent_fd: int, prefix: bytes) -> None:
    """Remove staging folders a crashed restore left behind (only our own)."""
    for name in map(os.fsencode, os.listdir(parent_fd)):
        if not name.startswith(prefix):
            continue
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            log.warning("removing a restore left unfinished: %s", os.fsdecode(name))
            remove_tree(name, parent_fd)


def _included(include: list[bytes] | None) -> tuple[set[bytes], set[bytes]] | None:
    """The paths asked for and the folders above them, or None for everything."""
    if include is None:
        return None
    wanted: set[bytes] = set()
    above: set[bytes] = set()
    for path in include:
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise RestoreError("-", os.fsdecode(path), "a path to restore may not contain ..")
        if not parts:
            return None  # the whole snapshot
        wanted.add(b"/".join(parts))
        for i in range(1, len(parts)):
            above.add(b"/".join(parts[:i]))
    return wanted, above


def _plan(
    repo: Repository,
    trees: TreeCache,
    snap: Snapshot,
    sfd: int,
    include: list[bytes] | None = None,
) -> _Plan:
    plan = _Plan()
    maker = _Maker(sfd)
    try:
        _walk_plan(repo, trees, snap, plan, maker, include)
    except BaseException:
        maker.close(check=False)  # the walk's error is the one to report
        raise
    maker.close()
    return plan


class _Maker:
    """The plan's filesystem work (folders, files of several blobs), done in plan order
    on a thread of its own so that the kernel's work overlaps decoding the trees (the
    calls release the GIL). ``close()`` waits for it and raises its first error."""

    _STOP = (b"", -2)

    def __init__(self, sfd: int) -> None:
        self.sfd = sfd
        self.jobs: queue.SimpleQueue[tuple[bytes, int]] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="restore-plan", daemon=True)
        self.thread.start()

    def mkdir(self, rel: bytes) -> None:
        self.jobs.put((rel, -1))

    def create(self, rel: bytes, size: int) -> None:
        """An empty file (``size`` > 0: sparse, truncated to it)."""
        self.jobs.put((rel, size))

    def _run(self) -> None:
        sfd = self.sfd
        while True:
            rel, size = self.jobs.get()
            if size == -2:
                return
            if self.error is not None:
                continue
            try:
                if size == -1:
                    os.mkdir(rel, 0o700, dir_fd=sfd)
                else:
                    fd = os.open(rel, _CREATE, 0o600, dir_fd=sfd)
                    try:
                        if size:
                            os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
            except BaseException as exc:  # noqa: BLE001 - raised by close()
                self.error = exc

    def close(self, *, check: bool = True) -> None:
        self.jobs.put(self._STOP)
        self.thread.join()
        if check and self.error is not None:
            raise self.error


def _walk_plan(
    repo: Repository,
    trees: TreeCache,
    snap: Snapshot,
    plan: _Plan,
    maker: _Maker,
    include: list[bytes] | None,
) -> None:
    only = _included(include)
    found: set[bytes] = set()
    # (tree, path, depth, whole): ``whole`` is False on the way down to an included path.
    stack: list[tuple[BlobId, bytes, int, bool]] = [(snap.tree, b"", 0, only is None)]
    while stack:
        tid, rel, depth, whole = stack.pop()
        if depth > MAX_DEPTH:
            raise IntegrityError(f"snapshot nests deeper than {MAX_DEPTH} folders")
        for n in trees.nodes(tid, consume=True):
            sub = rel + b"/" + n.name if rel else n.name
            inside = whole
            if not whole:
                assert only is not None
                if sub in only[0]:
                    inside = True
                    found.add(sub)
                elif not (sub in only[1] and n.type == "dir"):
                    continue
            plan.count += 1
            if plan.count > MAX_NODES:
                raise IntegrityError(f"snapshot holds more than {MAX_NODES} entries")
            if n.type == "dir":
                assert n.subtree is not None
                maker.mkdir(sub)
                plan.dirs.append((sub, n))
                stack.append((n.subtree, sub, depth + 1, inside))
            elif n.type == "file" and n.error is not None:
                plan.count -= 1
            elif n.link is not None:
                plan.links.append((sub, n.link))
            elif n.type == "file":
                _plan_file(repo, plan, maker, sub, n)
            else:
                plan.specials.append((sub, n))
    if only is not None:
        missing = only[0] - found
        if missing:
            raise RestoreError(
                snap.id[:12],
                "-",
                "not in the snapshot: " + ", ".join(sorted(map(os.fsdecode, missing))[:5]),
            )
        # A hard link whose first name was not asked for: that file's content, as a copy.
        for i, (sub, link) in enumerate(plan.links):
            if link not in plan.regular and not any(link == s for s, _n in plan.specials):
                first = find(repo, snap, link)
                if first.type == "file" and first.error is None and first.link is None:
                    _plan_file(repo, plan, maker, sub, first)
                    plan.links[i] = (sub, b"")
        plan.links = [(s, ln) for s, ln in plan.links if ln]


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _plan_file(repo: Repository, plan: _Plan, maker: _Maker, rel: bytes, n: Node) -> None:
    idx = len(plan.files)
    if n.sparse is not None or len(n.content) > 1:
        # Several writers (or holes): the file must exist before any of them runs.
        maker.create(rel, n.size if n.sparse is not None else 0)
        plan.created.add(idx)
    plan.files.append((rel, _META.pack(n.mode, n.uid, n.gid, n.atime_ns, n.mtime_ns, n.size)))
    plan.left.append(len(n.content))
    if n.xattrs:
        plan.xattrs[idx] = n.xattrs
    plan.regular.add(rel)
    if n.sparse is None and len(n.content) == 1:
        # Most files: one blob at offset 0, whose length is checked against the size
        # when it is fetched (``check_size``) rather than looked up here once more.
        plan.bytes_total += n.size
        plan.add_dest(n.content[0], idx, 0)
        return
    extents = n.sparse if n.sparse is not None else [(0, n.size)]
    ext_i, pos, left = 0, 0, 0
    if extents:
        pos, left = extents[0]
    for bid in n.content:
        length = repo.locate(bid).raw_len
        plan.bytes_total += length
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


def _proc_path(sfd: int, rel: bytes) -> bytes:
    """A path to ``rel`` inside the (private) staging folder through its descriptor, for
    the calls that take no descriptor (symlinks, device nodes); its last component is
    never followed."""
    return b"/proc/self/fd/%d/%s" % (sfd, rel)


def _set_meta(sfd: int, rel: bytes, n: Node, *, as_root: bool, symlink: bool = False) -> list[str]:
    """A folder's, symlink's or special file's metadata (``xattrs.apply_metadata``);
    returns the attributes that could not be kept."""
    times = (n.atime_ns, n.mtime_ns)
    if n.type == "dir":
        fd = os.open(rel, _DIR, dir_fd=sfd)
        try:
            return apply_metadata(
                fd,
                mode=n.mode,
                uid=n.uid,
                gid=n.gid,
                xattrs=n.xattrs,
                times=times,
                as_root=as_root,
            )
        finally:
            os.close(fd)
    return apply_metadata(
        _proc_path(sfd, rel),
        mode=n.mode,
        uid=n.uid,
        gid=n.gid,
        xattrs=n.xattrs,
        times=times,
        as_root=as_root,
        symlink=symlink,
    )


def _set_file_meta(fd: int, plan: _Plan, idx: int, *, as_root: bool) -> list[str]:
    """A regular file's metadata, through its open descriptor."""
    mode, uid, gid, atime, mtime, _size = _META.unpack(plan.files[idx][1])
    return apply_metadata(
        fd,
        mode=mode,
        uid=uid,
        gid=gid,
        xattrs=plan.xattrs.get(idx),
        times=(atime, mtime),
        as_root=as_root,
    )


def apply_root_meta(fd: int, snap: Snapshot, *, as_root: bool) -> list[str]:
    """The snapshot's root folder attributes (owner, mode, ACLs, xattrs, times) onto the
    open folder ``fd``: a home restored into a missing folder gets its own owner and
    0700 back, never root's 0755."""
    r = snap.root
    return apply_metadata(
        fd,
        mode=r.get("mode", 0o700),
        uid=r.get("uid", 0),
        gid=r.get("gid", 0),
        xattrs=snap.root_xattrs,
        times=(r.get("atime", 0), r.get("mtime", 0)),
        as_root=as_root,
    )


def restore(
    repo: Repository,
    snap: Snapshot,
    target: str | os.PathLike[str],
    *,
    workers: int = 4,
    progress: ProgressFn | None = None,
    merge: bool = False,
    include: list[bytes] | None = None,
    processes: int | None = None,
) -> RestoreStats:
    """Restore ``snap`` into ``target``, which must be absent or an empty folder.

    Writes into a staging folder on the same filesystem (inside ``target`` when it
    exists, beside it otherwise), verifies every blob against its hash, sets file then
    directory metadata, and only then moves the result into place. On any failure the
    staging folder is removed, ``target`` is left as it was and ``RestoreError`` (or
    ``TargetNotEmpty`` before anything was written) is raised. Never follows a symlink:
    names are checked by the tree decoder, every file is created with ``O_EXCL`` and
    every call is relative to the staging folder's descriptor. Attributes that cannot be
    put back (not root, a filesystem without ACLs) are listed in ``stats.skipped``.

    With ``merge`` the target may hold files: nothing in it is overwritten; a top-level
    entry of the snapshot whose name is taken goes into ``hometier-conflicts-<id>/``
    in the target instead, and is listed in ``stats.conflicts``.

    ``include``: restore only these paths (relative to the snapshot's root; folders with
    everything in them) and the folders above them. A hard link whose first name is not
    included is restored as a copy of it.

    ``processes``: forked writer processes that create the files of one blob (most
    files), beside the ``workers`` fetch threads; ``None`` picks one per core (at most
    ``MAX_WRITERS``) when the snapshot has enough files to be worth a fork, ``0`` writes
    everything from the fetch threads (see ``engine.writers``).
    """
    started = time.monotonic()
    tgt = os.fsencode(os.path.abspath(target))
    token = secrets.token_hex(4).encode()
    parent, name = os.path.split(tgt)
    try:
        tfd = _open_target(tgt, merge)
        if tfd is not None:
            parent_fd = tfd
            prefix = STAGING_PREFIX.encode()
        else:
            # The folder above the target is the operator's (often /home, itself
            # sometimes a symlink): follow it; the target itself is never a symlink.
            os.makedirs(parent, exist_ok=True)
            parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            prefix = STAGING_PREFIX.encode() + name[:128] + b"-"  # stays under NAME_MAX
    except OSError as exc:
        raise RestoreError(snap.id[:12], os.fsdecode(tgt), _describe(exc)) from exc
    exists = tfd is not None
    as_root = os.geteuid() == 0
    stats = RestoreStats()
    lost = _Lost(stats)
    staging = prefix + token
    sfd = -1
    try:
        _clean_stale(parent_fd, prefix)
        sfd = _open_staging(parent_fd, staging)
        try:
            repo = repo.for_snapshot(snap)  # blobs are found through its locator
            trees = TreeCache(repo, [snap.tree], workers=workers)
            plan = _plan(repo, trees, snap, sfd, include)
            procs = _writer_count(processes, len(plan.files) - len(plan.created))
            if processes is None:  # what the caller did not ask for comes from the budget
                procs = writers.BUDGET.take(procs)
            try:
                _write_contents(repo, plan, sfd, stats, workers, progress, as_root, lost, procs)
            finally:
                if processes is None:
                    writers.BUDGET.give(procs)
            _finish(plan, sfd, stats, as_root, lost)
            if exists:
                _move_into(sfd, parent_fd, staging, snap, stats, tgt)
                lost.add(b"", apply_root_meta(parent_fd, snap, as_root=as_root))
            else:
                lost.add(b"", apply_root_meta(sfd, snap, as_root=as_root))
                rename_noreplace(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException as exc:
            _drop_staging(parent_fd, staging, sfd)
            if isinstance(exc, KeyboardInterrupt):
                raise
            detail = exc.get_message() if isinstance(exc, Error) else _describe(exc)
            raise RestoreError(snap.id[:12], os.fsdecode(tgt), detail) from exc
    finally:
        if sfd >= 0:
            os.close(sfd)
        os.close(parent_fd)
    lost.close()
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


def _writer_count(asked: int | None, files: int) -> int:
    """How many writer processes a restore of ``files`` single-blob files forks."""
    if not writers.available():
        return 0
    if asked is not None:
        return max(0, asked)
    if files < WRITERS_FROM:
        return 0  # a fork costs more than a few thousand files' creation
    return max(1, min(MAX_WRITERS, cores(), files // WRITERS_FROM))


def _move_into(
    sfd: int, tfd: int, staging: bytes, snap: Snapshot, stats: RestoreStats, tgt: bytes
) -> None:
    """Move staged entries into an existing target, never replacing what is there; a
    taken name's entry goes into a fresh conflicts folder (by descriptor: the folder is
    the user's, and a user swapping it for a symlink must not redirect root's renames)."""
    conflicts: tuple[bytes, int] | None = None
    try:
        for name in sorted(map(os.fsencode, os.listdir(sfd))):
            try:
                rename_noreplace(name, name, src_dir_fd=sfd, dst_dir_fd=tfd)
            except FileExistsError:
                if conflicts is None:
                    conflicts = make_conflicts_dir(
                        tfd, snap.id[:12], snap.root.get("uid", 0), snap.root.get("gid", 0)
                    )
                rename_noreplace(name, name, src_dir_fd=sfd, dst_dir_fd=conflicts[1])
                stats.conflicts.append(os.fsdecode(name))
    finally:
        if conflicts is not None:
            os.close(conflicts[1])
    if conflicts is not None:
        stats.conflicts_dir = os.fsdecode(tgt + b"/" + conflicts[0])
    _drop_staging(tfd, staging, sfd)


def make_conflicts_dir(dir_fd: int, tag: str, uid: int, gid: int) -> tuple[bytes, int]:
    """A fresh ``hometier-conflicts-<tag>[-N]`` folder in ``dir_fd`` (a home), 0700,
    owned by ``uid``:``gid`` (it holds their files), returned with an open descriptor.

    Made by root, opened without following a link, proven to be the folder just made
    (root's, 0700 — a user who swaps the name in between makes us try the next name),
    and only then given to the user with ``fchown``. Callers move entries into it by
    descriptor, never through its name."""
    base = CONFLICTS_PREFIX.encode() + tag.encode()
    for n in range(1, 1000):
        name = base if n == 1 else base + b"-%d" % n
        try:
            fd = make_private_dir(name, dir_fd)
        except (FileExistsError, Swapped):
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                continue
            raise
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        return name, fd
    raise RestoreError(tag, "-", "too many conflicts folders")


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
    lost: _Lost,
    processes: int = 0,
) -> None:
    """Fetch every blob and write it where it belongs.

    A file of one blob (most files of a home) is created, written and given its metadata
    with one open: by one of ``processes`` forked writers (``engine.writers``) that the
    fetch threads hand the blob to as it is stored (the writer decodes and verifies it
    first; one that fails is read again here), or without them by the fetch thread
    itself, after verifying it.
    A file of several blobs was created by the plan; the fetch thread that writes its
    last blob finishes it. Empty files go to the writers (or a thread pool) first.
    Nothing here follows a link: every name is relative to the staging folder and
    opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when created).
    """
    prog = RestoreProgress(files_total=len(plan.files), bytes_total=plan.bytes_total)
    created = plan.created
    empty = [i for i, n in enumerate(plan.left) if n == 0]

    def finish(fd: int, idx: int) -> list[str]:
        return _set_file_meta(fd, plan, idx, as_root=as_root)

    pool: Writers | None = None
    if processes > 0:
        pool = Writers(plan.files, sfd, processes, finish, repo.config.blob_key)
    try:
        if pool is not None:
            for idx in empty:
                if idx not in created:  # sparse files made by the plan stay here
                    pool.send(idx, b"")
            empty = [idx for idx in empty if idx in created]
        _fetch_and_write(repo, plan, sfd, stats, workers, progress, lost, pool, prog, finish)
        if pool is not None:
            for rel, what in pool.close():
                lost.add(rel, what)
            if pool.failed:
                _read_failed_again(repo, plan, sfd, workers, lost, finish, pool.failed)
    finally:
        if pool is not None:
            pool.abort()

    def finish_empty(batch: list[int]) -> None:
        for idx in batch:
            rel = plan.files[idx][0]
            fd = os.open(rel, _REOPEN if idx in created else _CREATE, 0o600, dir_fd=sfd)
            try:
                lost.add(rel, finish(fd, idx))
            finally:
                os.close(fd)

    if 0 < len(empty) <= DIR_BATCH:
        finish_empty(empty)  # a few: no threads to start
    elif empty:
        step = -(-len(empty) // workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as tp:
            for f in [
                tp.submit(finish_empty, empty[i : i + step]) for i in range(0, len(empty), step)
            ]:
                f.result()
    if progress is not None:
        progress(prog)


def _fetch_and_write(
    repo: Repository,
    plan: _Plan,
    sfd: int,
    stats: RestoreStats,
    workers: int,
    progress: ProgressFn | None,
    lost: _Lost,
    pool: Writers | None,
    prog: RestoreProgress,
    finish: Callable[[int, int], list[str]],
) -> None:
    lock = threading.Lock()
    last = [0.0]
    left = plan.left
    created = plan.created

    def counted(blobs: int, nbytes: int) -> None:
        with lock:
            stats.blobs += blobs
            prog.bytes_done += nbytes
            now = time.monotonic()
            if progress is not None and now - last[0] >= 0.2:
                last[0] = now
                progress(prog)

    def take(bid: BlobId, loc: Location, stored: memoryview) -> bool:
        # The common case: the only place of this blob is a file of this one blob, made
        # by a writer process, which decodes and verifies it there.
        dest = plan.dest[bid]
        if pool is None or not isinstance(dest, int):
            return False
        one, pos = divmod(dest, _POS)
        if pos != 0 or one in created:
            return False
        plan.check_size(one, loc.raw_len)
        pool.send_stored(one, bid, loc.comp, loc.raw_len, stored)
        counted(1, loc.raw_len)
        return True

    def write(bid: BlobId, data: bytes) -> None:
        targets = plan.dests(bid)
        for idx, off in targets:
            if idx not in created:  # a file of this one blob, at offset 0
                plan.check_size(idx, len(data))
                if pool is not None:
                    pool.send(idx, data)
                else:
                    _write_whole(sfd, plan, idx, data, finish, lost)
                continue
            fd = os.open(plan.files[idx][0], _REOPEN, dir_fd=sfd)
            try:
                _pwrite_all(fd, data, off)
                with lock:
                    left[idx] -= 1
                    done = left[idx] == 0
                if done:
                    lost.add(plan.files[idx][0], finish(fd, idx))
            finally:
                os.close(fd)
        counted(1, len(data) * len(targets))

    repo.for_each_blob([BlobId(b) for b in plan.dest], write, workers=workers, stored=take)


def _read_failed_again(
    repo: Repository,
    plan: _Plan,
    sfd: int,
    workers: int,
    lost: _Lost,
    finish: Callable[[int, int], list[str]],
    failed: list[tuple[int, bytes]],
) -> None:
    """The files whose blob failed verification in a writer (which created nothing):
    what any read does with such a blob, here, by pack and ``workers`` at a time: read
    it again, then from another copy the index knows; ``IntegrityError`` if none
    verifies."""
    files = {bid: idx for idx, bid in failed}
    shown = ", ".join(b.hex()[:16] for b in list(files)[:5])
    log.warning(
        "%d blob(s) failed verification in a writer process (%s%s); reading them again",
        len(files),
        shown,
        ", ..." if len(files) > 5 else "",
    )

    def again(bid: BlobId, data: bytes) -> None:
        plan.check_size(files[bid], len(data))
        _write_whole(sfd, plan, files[bid], data, finish, lost)

    repo.for_each_blob([BlobId(b) for b in files], again, workers=workers)


def _write_whole(
    sfd: int,
    plan: _Plan,
    idx: int,
    data: bytes,
    finish: Callable[[int, int], list[str]],
    lost: _Lost,
) -> None:
    """Create file ``idx`` of one blob (``O_EXCL``, never through a link), write it and
    set its metadata."""
    rel = plan.files[idx][0]
    fd = os.open(rel, _CREATE, 0o600, dir_fd=sfd)
    try:
        _pwrite_all(fd, data, 0)
        lost.add(rel, finish(fd, idx))
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def _finish(plan: _Plan, sfd: int, stats: RestoreStats, as_root: bool, lost: _Lost) -> None:
    """Special files, hardlinks, then folders' metadata, deepest first (regular files
    were finished by ``_write_contents``)."""
    skipped: set[bytes] = set()
    stats.files += len(plan.files)
    stats.bytes += sum(_META.unpack(meta)[5] for _rel, meta in plan.files)
    for rel, n in plan.specials:
        if n.type == "symlink":
            assert n.target is not None
            os.symlink(n.target, rel, dir_fd=sfd)
            lost.add(rel, _set_meta(sfd, rel, n, as_root=as_root, symlink=True))
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
        lost.add(rel, _set_meta(sfd, rel, n, as_root=as_root))
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
    # Folders last, deepest first, so that a folder's times are set after everything
    # inside it was made, and (not as root) a folder is narrowed only after everything
    # below it was done. Folders of one depth do not touch each other: a level is
    # shared out to a few threads (the calls release the GIL).
    levels: dict[int, list[tuple[bytes, Node]]] = {}
    for rel, n in plan.dirs:
        levels.setdefault(rel.count(b"/"), []).append((rel, n))

    def finish_dirs(batch: list[tuple[bytes, Node]]) -> None:
        for rel, n in batch:
            lost.add(rel, _set_meta(sfd, rel, n, as_root=as_root))

    stats.dirs += len(plan.dirs)
    if len(plan.dirs) <= DIR_BATCH:  # a few: no threads to start
        for depth in sorted(levels, reverse=True):
            finish_dirs(levels[depth])
        return
    with ThreadPoolExecutor(max_workers=DIR_THREADS, thread_name_prefix="restore-dirs") as tp:
        for depth in sorted(levels, reverse=True):
            level = levels[depth]
            step = max(DIR_BATCH, -(-len(level) // DIR_THREADS))
            for f in [
                tp.submit(finish_dirs, level[i : i + step]) for i in range(0, len(level), step)
            ]:
                f.result()
