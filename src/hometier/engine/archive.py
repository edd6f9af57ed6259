"""``backup``: walk a folder and store it as a snapshot, reading only what changed."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hometier import __version__, faults
from hometier.engine.trees import TreeCache
from hometier.engine.xattrs import read_xattrs
from hometier.errors import Error, IntegrityError
from hometier.repo import BlobId, BlobType, Repository
from hometier.repo.chunker import Chunking, iter_chunks
from hometier.repo.codec import MAX_BLOB
from hometier.repo.snapshot import Snapshot, Stats
from hometier.repo.tree import (
    Node,
    encode_tree,
    node_from_json,
    raw_content,
    raw_name,
    raw_sparse,
    raw_subtree,
    raw_xattrs,
)
from hometier.repo.writer import BlobWriter

if TYPE_CHECKING:
    from hometier.repo.index import Location

log = logging.getLogger(__name__)

MAX_DEPTH = 1000
MOUNTED = "another filesystem is mounted here"
"""How ``stats.skipped`` lists a mount point found inside the folder."""
INLINE_FILES = 64
INLINE_BYTES = 256 * 1024
"""A folder of at most ``INLINE_FILES`` files reads those up to ``INLINE_BYTES`` on the
walking thread (see ``_archive_open_dir``)."""
MAX_PENDING = 1024
"""Walked folders whose trees may wait for their readers before the walk waits too."""
RACY_NS = 2_000_000_000
"""An entry whose ctime is this close to (or after) the start of the parent snapshot may
have changed again within the same clock tick after the parent read it: its extended
attributes are read again even when its ctime did not move (git's "racy" entries).
This assumes the filesystem stamps ctimes with a clock within ``RACY_NS`` of this host's
(a network filesystem whose server runs seconds behind would defeat it), and that the
parent listed attributes with the same privileges (a parent made without root lists no
``trusted.*`` attribute, and a root backup on top of it keeps none)."""
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""How a file that ``lstat`` found regular is opened to be read. Its user may have put a
named pipe under its name since: without ``O_NONBLOCK``, opening a pipe waits for a
writer for ever. The open file must still be the regular file listed (``_read_file``);
reads of a regular file ignore the flag."""


_PROC = os.path.isdir("/proc/self/fd")
"""Entries are reached through their open folder (Linux); elsewhere by path."""


class _Swapped(Exception):
    """A folder was replaced (by a symlink, a file or another folder) while being walked."""


class BackupError(Error):
    """Backup of {} failed: {}"""

    exit_code = 7


class _WriteFailed(Exception):
    """Storing a file's content failed (the writer, its spool, the index cache): the
    backup's failure, never the file's. An ``OSError`` from there must not reach
    ``read_file``, which would record the file as unreadable and go on."""


@dataclass
class Progress:
    files: int = 0
    bytes: int = 0
    bytes_read: int = 0


ProgressFn = Callable[[Progress], None]


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Data extents of a sparse file via SEEK_DATA/SEEK_HOLE."""
    extents: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end - start))
        pos = end
    return extents


@dataclass
class _Pending:
    """A walked folder whose tree waits for its files' readers."""

    rel: bytes
    nodes: list[Node]
    jobs: list[tuple[Future[None], int]]
    parent_tree: BlobId | None
    same: bool
    """Every entry is the parent tree's, attributes and content (subfolders: but for
    their trees, which ``dirs`` compares once they are encoded)."""
    entry: Node | None
    dirs: list[tuple[Node, BlobId | None]] = field(default_factory=list)
    """Each subfolder's node and its tree in the parent snapshot."""
    bid: BlobId | None = None


def _by_name(then: list[Any]) -> tuple[dict[bytes, dict[str, Any]], bool]:
    """The parent tree's undecoded entries by name (each name validated as a restore
    validates it), and whether they are in canonical order: a tree out of order is never
    reused, even for an unchanged folder, so that it is written again as it should be."""
    old: dict[bytes, dict[str, Any]] = {}
    ordered = True
    last = b""
    for d in then:
        key = raw_name(d)
        if key <= last:
            ordered = False
        last = key
        old[key] = d
    if len(old) != len(then):
        raise IntegrityError("tree holds the same name twice")
    return old, ordered


def _int_equal(then: Any, now: int) -> bool:
    """``then`` (from the parent's JSON) is the integer ``now``: not ``true`` nor ``1.0``,
    which equal 1 in Python and which the decoder refuses."""
    return type(then) is int and then == now


def _same(node: Node, d: dict[str, Any], reused: bool) -> bool:
    """Whether ``node`` encodes as the parent's undecoded entry ``d`` (a folder's tree
    aside: ``_finish_dir`` compares it). Attributes must be integers, not merely equal
    (JSON's ``true`` or ``1.0`` equal 1 in Python, and would not decode). A file is the
    parent's only if its content was reused from it; other entries (symlinks, hardlinks,
    devices) are rarer, and decoded whole."""
    get = d.get
    mode, uid, gid = get("mode", 0), get("uid", 0), get("gid", 0)
    mtime, atime, ctime, ino = get("mtime", 0), get("atime", 0), get("ctime", 0), get("ino", 0)
    if not (
        get("type") == node.type
        and mtime == node.mtime_ns
        and ctime == node.ctime_ns
        and ino == node.ino
        and atime == node.atime_ns
        and mode == node.mode
        and uid == node.uid
        and gid == node.gid
        and type(mtime) is int
        and type(ctime) is int
        and type(ino) is int
        and type(atime) is int
        and type(mode) is int
        and type(uid) is int
        and type(gid) is int
    ):
        return False
    if "xattrs" in d or node.xattrs is not None:
        if node.xattrs != raw_xattrs(d):
            return False
    if node.type == "file" and node.link is None:
        return reused
    return node.type == "dir" or node_from_json(d) == node


class _Archiver:
    def __init__(
        self,
        repo: Repository,
        writer: BlobWriter,
        chunking: Chunking,
        root_dev: int,
        workers: int,
        progress: ProgressFn | None,
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.chunking = chunking
        self.root_dev = root_dev
        self.stats = Stats()
        self.progress = Progress()
        self.on_progress = progress
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read")
        self.slots = threading.BoundedSemaphore(workers * 8)
        self.lock = threading.Lock()
        self.hardlinks: dict[tuple[int, int], bytes] = {}
        self.parent_trees: TreeCache | None = None
        self.where_then: Callable[[BlobId], Location | None] | None = None
        """Where the parent snapshot's locator put a blob (``BlobWriter.reuse``)."""
        self.trust_ctime_before = 0
        """Entries whose ctime is older than this and unchanged since the parent keep the
        parent's extended attributes without listing them again (0: never)."""
        self.pending: deque[_Pending] = deque()
        self._last_report = 0.0

    # --- one regular file (runs on a worker thread) ---------------------------------

    def read_file(
        self,
        dfd: int,
        name: bytes,
        rel: bytes,
        st: os.stat_result,
        node: Node,
        fd: int | None = None,
    ) -> None:
        """Read the file ``name`` of the open folder ``dfd`` into ``node`` (from ``fd``
        if given, which it then closes); a file that cannot be read gets ``node.error``
        (restore skips it) and is listed, the backup goes on."""
        try:
            self._read_file(dfd, name, rel, st, node, fd)
        except BackupError as exc:
            node.content, node.sparse, node.error = [], None, str(exc.args[1])
            self._note("changed", rel, node.error)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            node.content, node.sparse = [], None
            node.error = f"unreadable: {exc.strerror or exc}"
            self._note("errors", rel, node.error)

    def _open(self, dfd: int, name: bytes, rel: bytes, node: Node) -> int | None:
        """Open a file of the open folder ``dfd`` to read it; None (and ``node``
        emptied) if it vanished."""
        try:
            try:
                return os.open(name, _READ_FLAGS | _O_NOATIME, dir_fd=dfd)
            except PermissionError:
                return os.open(name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            self._note("changed", rel, "vanished")
            node.content = []
            node.size = 0
            return None

    def _read_file(
        self, dfd: int, name: bytes, rel: bytes, st: os.stat_result, node: Node, fd: int | None
    ) -> None:
        if fd is None:
            fd = self._open(dfd, name, rel, node)
            if fd is None:
                return
        try:
            now = os.fstat(fd)
            if now.st_ino != st.st_ino or not stat.S_ISREG(now.st_mode):
                raise BackupError(os.fsdecode(rel), "replaced while being archived")
            size = st.st_size
            sparse = st.st_blocks * 512 < size and size > 0
            extents = _data_extents(fd, size) if sparse else [(0, size)]
            content: list[BlobId] = []
            read = 0
            for off, length in extents:
                got = 0
                # At explicit offsets: finding the extents moved the file position.
                for chunk in iter_chunks(fd, length, self.chunking, off):
                    try:
                        bid, _new = self.writer.add(BlobType.DATA, chunk)
                    except OSError as exc:
                        raise _WriteFailed(exc) from exc
                    content.append(bid)
                    got += len(chunk)
                read += got
                if got != length:
                    self._note("changed", rel, "shrank while being read")
                    if not sparse:
                        size = got
                    break
            node.content = content
            node.size = size
            node.sparse = extents if sparse else None
            if sparse and read != sum(x[1] for x in extents):
                node.sparse = _clip(extents, read)
            after = os.fstat(fd)
            if after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size:
                self._note("changed", rel, "modified while being read")
            faults.point("mid_snapshot")
            with self.lock:
                self.stats.files_read += 1
                self.stats.bytes_read += read
                self.progress.bytes_read += read
        finally:
            os.close(fd)

    def _note(self, kind: str, rel: bytes, why: str) -> None:
        with self.lock:
            self.stats.note(kind, f"{os.fsdecode(rel)}: {why}")

    # --- directories (main thread) --------------------------------------------------

    def archive_dir(
        self,
        path: bytes,
        rel: bytes,
        parent_tree: BlobId | None,
        depth: int,
        expect: os.stat_result | None = None,
        parent_fd: int | None = None,
        entry: Node | None = None,
    ) -> _Pending:
        """Walk one folder. It is opened once, without following a link, and every
        entry is reached through that open folder (``/proc/self/fd/N/name``): a folder
        swapped for a symlink mid-walk is never read through. ``_Swapped`` if the folder
        is no longer the one ``expect`` describes.

        The folder's tree is encoded later, once the readers of its files are done
        (``_drain``): the walk does not wait for them. ``entry`` (the folder's node in
        its parent) gets the tree's id then."""
        if depth > MAX_DEPTH:
            raise BackupError(os.fsdecode(rel), f"nested deeper than {MAX_DEPTH} folders")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dfd = (
                os.open(path, flags)
                if parent_fd is None
                else os.open(path, flags, dir_fd=parent_fd)
            )
        except (NotADirectoryError, OSError) as exc:
            if parent_fd is not None and exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                raise _Swapped() from exc
            raise
        try:
            now = os.fstat(dfd)
            if expect is not None and (now.st_ino, now.st_dev) != (expect.st_ino, expect.st_dev):
                raise _Swapped()
            base = b"/proc/self/fd/%d" % dfd if _PROC else path
            return self._archive_open_dir(base, rel, parent_tree, depth, dfd, entry)
        finally:
            os.close(dfd)

    def _archive_open_dir(
        self,
        path: bytes,
        rel: bytes,
        parent_tree: BlobId | None,
        depth: int,
        dfd: int,
        entry: Node | None,
    ) -> _Pending:
        # The parent's entries stay undecoded: each is compared with what is on disk
        # field by field, and only what is reused from it is validated and decoded.
        old: dict[bytes, dict[str, Any]] = {}
        same = False
        if parent_tree is not None and self.parent_trees is not None:
            if parent_tree in self.parent_trees:
                # Each parent folder is visited once: drop its tree after reading it.
                then = self.parent_trees.raw_nodes(parent_tree, consume=True)
                old, same = _by_name(then)
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        # A folder of a few files (most folders of a home: caches, packages, .git) reads
        # them right here: handing each to a reader and waiting for it costs more than
        # the read. Folders of many files, and big files, go to the readers in parallel.
        inline = sum(1 for e in entries if e.is_file(follow_symlinks=False)) <= INLINE_FILES
        nodes: list[Node] = []
        jobs: list[tuple[Future[None], int]] = []
        dirs: list[tuple[Node, BlobId | None]] = []
        for ent in entries:
            name = ent.name
            prev = old.get(name)
            reused = False
            full = path + b"/" + name
            sub = rel + b"/" + name if rel else name
            try:
                # Relative to the open folder (fstatat), never through a symlink.
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                self._note("changed", sub, "vanished")
                continue
            node = Node(
                name=name,
                type="file",
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime_ns=st.st_mtime_ns,
                atime_ns=st.st_atime_ns,
                ctime_ns=st.st_ctime_ns,
                ino=st.st_ino,
            )
            fmt = stat.S_IFMT(st.st_mode)
            try:
                if fmt == stat.S_IFDIR:
                    if st.st_dev != self.root_dev:
                        self._note("skipped", sub, MOUNTED)
                        continue
                    node.type = "dir"
                    then_tree = (
                        raw_subtree(prev)
                        if prev is not None and prev.get("type") == "dir"
                        else None
                    )
                    try:
                        self.archive_dir(
                            name if _PROC else full,
                            sub,
                            then_tree,
                            depth + 1,
                            expect=st,
                            parent_fd=dfd if _PROC else None,
                            entry=node,
                        )
                    except _Swapped:
                        self._note("changed", sub, "replaced while being archived")
                        continue
                    self.stats.dirs += 1
                    dirs.append((node, then_tree))
                elif fmt == stat.S_IFREG:
                    reused = self._file(
                        dfd,
                        name,
                        sub,
                        st,
                        node,
                        prev,
                        jobs,
                        inline=inline and st.st_size <= INLINE_BYTES,
                    )
                elif fmt == stat.S_IFLNK:
                    node.type = "symlink"
                    node.target = os.readlink(name, dir_fd=dfd)
                    self.stats.symlinks += 1
                elif fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
                    node.type = {
                        stat.S_IFIFO: "fifo",
                        stat.S_IFCHR: "chr",
                        stat.S_IFBLK: "blk",
                    }[fmt]
                    if fmt != stat.S_IFIFO:
                        node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in self.hardlinks:
                            node.link = self.hardlinks[key]
                        else:
                            self.hardlinks[key] = sub
                    self.stats.others += 1
                else:
                    what = "socket" if fmt == stat.S_IFSOCK else f"file type {fmt:o}"
                    self._note("skipped", sub, f"{what} not archived")
                    continue
                # Every attribute (user.*, ACLs, capabilities, trusted.* as root), read
                # through the folder's descriptor and never through a symlink -- unless
                # the entry's ctime, which every change of an attribute moves, is the
                # parent's and old enough not to hide a change in the same clock tick.
                if (
                    prev is not None
                    and _int_equal(prev.get("ctime"), st.st_ctime_ns)
                    and _int_equal(prev.get("ino"), st.st_ino)
                    and prev.get("type") == node.type
                    and st.st_ctime_ns < self.trust_ctime_before
                ):
                    node.xattrs = raw_xattrs(prev)
                else:
                    try:
                        node.xattrs = read_xattrs(full)
                    except PermissionError as exc:
                        self._note("errors", sub, f"extended attributes unreadable: {exc.strerror}")
            except FileNotFoundError:
                self._note("changed", sub, "vanished")
                continue
            except PermissionError as exc:
                self._note("errors", sub, f"unreadable: {exc.strerror}")
                continue
            nodes.append(node)
            if same:
                same = prev is not None and _same(node, prev, reused)
        same = same and len(nodes) == len(old)  # and no entry of the parent's is gone
        pending = _Pending(rel, nodes, jobs, parent_tree, same, entry, dirs)
        self.pending.append(pending)
        self._drain(until=MAX_PENDING)
        return pending

    # --- trees, in walk order, once their files are read -----------------------------

    def _drain(self, *, until: int) -> None:
        """Encode the trees of walked folders whose readers are done, in walk order
        (children before parents); wait for readers while more than ``until`` wait."""
        while self.pending:
            front = self.pending[0]
            if len(self.pending) <= until and not all(f.done() for f, _fd in front.jobs):
                return
            self.pending.popleft()
            self._finish_dir(front)

    def _finish_dir(self, p: _Pending) -> None:
        self._wait([f for f, _fd in p.jobs])
        for n in p.nodes:
            if n.type == "file" and n.link is None:
                self.stats.files += 1
                self.stats.bytes += n.size
        self.progress.files = self.stats.files
        self.progress.bytes = self.stats.bytes
        self._report()
        if (
            p.same
            and all(n.subtree == then for n, then in p.dirs)
            and p.parent_tree is not None
            and self._reuse(p.parent_tree)
        ):
            # Nothing in this folder changed: its tree is the parent's, byte for byte
            # (encoding is a function of the entries), so skip encoding and hashing it.
            bid = p.parent_tree
        else:
            data = encode_tree(p.nodes)
            if len(data) > MAX_BLOB:
                raise BackupError(
                    os.fsdecode(p.rel) or "/", f"folder has too many entries ({len(p.nodes)})"
                )
            bid, _ = self.writer.add(BlobType.TREE, data)
        p.bid = bid
        if p.entry is not None:
            p.entry.subtree = bid

    def _reuse(self, bid: BlobId) -> bool:
        """May the new snapshot reference a blob of the parent's without storing it?"""
        then = self.where_then
        return self.writer.reuse(bid, then(bid) if then is not None else None)

    def abandon(self) -> None:
        """After a failure: cancel readers not started (closing their files), wait for
        the others. Nothing of the walk is used afterwards."""
        for p in self.pending:
            for f, fd in p.jobs:
                if f.cancel():
                    os.close(fd)
                    self.slots.release()
                else:
                    f.exception()
        self.pending.clear()

    def _file(
        self,
        dfd: int,
        name: bytes,
        rel: bytes,
        st: os.stat_result,
        node: Node,
        prev: dict[str, Any] | None,
        jobs: list[tuple[Future[None], int]],
        *,
        inline: bool = False,
    ) -> bool:
        """Archive a regular file's content into ``node``: the parent's (``prev``, its
        undecoded entry) if size, mtime, ctime and inode say it is unchanged and its
        blobs are still there (then True), else read now or by a reader."""
        node.size = size = st.st_size
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self.hardlinks.get(key)
            if first is not None:
                node.link = first
                return False
        if (
            prev is not None
            and prev.get("type") == "file"
            and "link" not in prev
            and "link_b64" not in prev
            and "error" not in prev  # an unreadable file is read again, never reused
            and type(then_size := prev.get("size")) is int
            and then_size == size
            and _int_equal(prev.get("mtime"), st.st_mtime_ns)
            and _int_equal(prev.get("ctime"), st.st_ctime_ns)
            and _int_equal(prev.get("ino"), st.st_ino)
        ):
            content = raw_content(prev)
            if all(self._reuse(b) for b in content):
                node.content = content
                node.sparse = raw_sparse(prev, size)
                if st.st_nlink > 1:
                    self.hardlinks[key] = rel
                return True
        if st.st_nlink > 1:
            # Read now, not on a worker: later names may link to this one only if it
            # really is in the snapshot with its content.
            self.read_file(dfd, name, rel, st, node)
            if node.error is None:
                self.hardlinks[key] = rel
            return False
        if inline:
            self.read_file(dfd, name, rel, st, node)
            return False
        # Opened here, read by a reader: the reader owns the descriptor, so the folder's
        # own descriptor may close (and the walk go on) before the file is read.
        self.slots.acquire()
        try:
            fd = self._open(dfd, name, rel, node)
        except OSError as exc:
            self.slots.release()
            node.content, node.sparse = [], None
            node.error = f"unreadable: {exc.strerror or exc}"
            self._note("errors", rel, node.error)
            return False
        if fd is None:
            self.slots.release()
            return False

        def job() -> None:
            try:
                self.read_file(dfd, name, rel, st, node, fd)
            finally:
                self.slots.release()

        try:
            jobs.append((self.pool.submit(job), fd))
        except BaseException:
            os.close(fd)
            self.slots.release()
            raise
        return False

    @staticmethod
    def _wait(futures: list[Future[None]]) -> None:
        """Wait for every reader of a folder; raise the first error after all are done."""
        first: BaseException | None = None
        for f in futures:
            exc = f.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def _report(self) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if now - self._last_report >= 0.2:
            self._last_report = now
            self.on_progress(self.progress)


def _clip(extents: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, ln in extents:
        if total <= 0:
            break
        out.append((off, min(ln, total)))
        total -= ln
    return out


def backup(
    repo: Repository,
    source: str | os.PathLike[str],
    *,
    user: str,
    parent: Snapshot | None = None,
    workers: int = 4,
    pack_size: int = 32 * 1024 * 1024,
    uploads: int = 2,
    progress: ProgressFn | None = None,
    hostname: str | None = None,
) -> Snapshot:
    """Archive the folder ``source`` as a new snapshot of ``user`` and return it.

    Full fidelity (see docs/format.md); symlinks are stored, never followed; the walk
    stays on the source's filesystem; sockets and other mounts are skipped and listed in
    ``stats.skipped``. With ``parent`` files whose size, mtime, ctime and inode are
    unchanged are reused without being read. Files that change while being read are
    listed in ``stats.changed``; unreadable entries in ``stats.errors`` (the snapshot is
    then not ``complete``). Blobs already in the repository are not uploaded again.

    Atomicity: the snapshot becomes visible only after every pack and index it needs is
    durable; a crash before that leaves only unreferenced packs, which ``prune`` removes.
    Raises ``BackupError`` (and store errors) on failure.
    """
    src = os.fsencode(os.path.abspath(source))
    started = time.time_ns()
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        raise BackupError(os.fsdecode(src), "no such folder") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BackupError(os.fsdecode(src), "not a folder")
    root_xattrs = read_xattrs(src)
    repo.load_index_for_backup()
    with repo.writer(pack_size=pack_size, uploads=uploads) as writer:
        arch = _Archiver(repo, writer, repo.config.chunking, st.st_dev, workers, progress)
        try:
            if parent is not None:
                view = repo.for_snapshot(parent)
                cache = TreeCache(view, [parent.tree], workers=workers)
                arch.parent_trees = cache
                if view.where.has_locator:
                    arch.where_then = view.where.getter()
                if parent.stats.complete:
                    arch.trust_ctime_before = parent.time_ns - RACY_NS
            top = arch.archive_dir(src, b"", parent.tree if parent else None, 0)
            arch._drain(until=0)
            assert top.bid is not None
            root = top.bid
            writer.flush()
        except OSError as exc:
            arch.abandon()
            raise BackupError(os.fsdecode(src), exc) from exc
        except _WriteFailed as exc:
            arch.abandon()
            cause = exc.args[0]
            raise BackupError(os.fsdecode(src), f"storing its content failed: {cause}") from cause
        except BaseException:
            arch.abandon()
            raise
        finally:
            arch.pool.shutdown(wait=True, cancel_futures=True)
        stats = arch.stats
        stats.blobs_new = writer.stats.blobs_new
        stats.bytes_new_raw = writer.stats.bytes_new_raw
        stats.bytes_new_stored = writer.stats.bytes_new_stored
        stats.packs_new = writer.stats.packs
    snap = Snapshot(
        user=user,
        time_ns=started,
        tree=root,
        root_xattrs=root_xattrs or {},
        root={
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime_ns,
            "atime": st.st_atime_ns,
        },
        hostname=hostname if hostname is not None else socket.gethostname(),
        source=os.fsdecode(src),
        parent=parent.id if parent else None,
        stats=stats,
        program=f"hometier {__version__}",
    )
    repo.save_snapshot(snap, writer.locations)  # its locator first, then the snapshot
    log.info(
        "snapshot %s of %s: %d files, %d bytes, %d new bytes stored",
        snap.id[:12],
        user,
        stats.files,
        stats.bytes,
        stats.bytes_new_stored,
    )
    return snap
