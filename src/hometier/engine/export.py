"""Read a snapshot as files: list a folder, stream a file, or a whole tree as tar or zip.

Used by the service so that users can browse and download old versions of their own
files, and so that an init container can receive a home as one stream (a POSIX PAX tar
that GNU tar also reads: nanosecond times in ``mtime``/``atime`` records, ``user.*``
xattrs as ``SCHILY.xattr.*``, hardlinks, devices, FIFOs; sparse files are sent with
their holes as zeros and made sparse again by ``untar``).
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator
from typing import IO, Any

from hometier.errors import NotFound
from hometier.repo import Repository
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node
from hometier.repo.views import SnapshotView

CHUNK = 1024 * 1024


class PathNotFound(NotFound):
    """No {} in snapshot {}."""


def split_path(path: str | bytes) -> list[bytes]:
    """Components of a path inside a snapshot; ``""`` and ``"/"`` are the root."""
    raw = os.fsencode(path) if isinstance(path, str) else path
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        raise PathNotFound(os.fsdecode(raw), "this snapshot (.. is not allowed)")
    return parts


def root_node(snap: Snapshot) -> Node:
    r = snap.root
    return Node(
        name=b"",
        type="dir",
        mode=r.get("mode", 0o700),
        uid=r.get("uid", 0),
        gid=r.get("gid", 0),
        mtime_ns=r.get("mtime", 0),
        atime_ns=r.get("atime", 0),
        subtree=snap.tree,
        xattrs=dict(snap.root_xattrs) or None,
    )


def _view(repo: Repository, snap: Snapshot) -> Repository:
    """Reads of a snapshot find its blobs through its locator, not the whole index."""
    if isinstance(repo, SnapshotView) and repo.where.sid == snap.id:
        return repo
    return repo.for_snapshot(snap)


def find(repo: Repository, snap: Snapshot, path: str | bytes) -> Node:
    """The node at ``path`` (the root for ``""``); ``PathNotFound``."""
    repo = _view(repo, snap)
    node = root_node(snap)
    for part in split_path(path):
        if node.type != "dir" or node.subtree is None:
            raise PathNotFound(os.fsdecode(path), snap.id[:12])
        match = [n for n in repo.load_tree(node.subtree) if n.name == part]
        if not match:
            raise PathNotFound(os.fsdecode(path), snap.id[:12])
        node = match[0]
    return node


def list_dir(repo: Repository, snap: Snapshot, path: str | bytes) -> list[Node]:
    repo = _view(repo, snap)
    node = find(repo, snap, path)
    if node.type != "dir" or node.subtree is None:
        raise PathNotFound(f"folder {os.fsdecode(path)}", snap.id[:12])
    return repo.load_tree(node.subtree)


def iter_content(repo: Repository, node: Node) -> Iterator[bytes]:
    """A regular file's bytes, in order; holes of sparse files come out as zeros.
    ``repo`` should be the snapshot's view (``Repository.for_snapshot``)."""
    if node.sparse is None:
        for bid in node.content:
            yield repo.read_blob(bid)
        return
    pos = 0
    blobs = iter(node.content)
    for off, length in node.sparse:
        while pos < off:
            n = min(CHUNK, off - pos)
            yield bytes(n)
            pos += n
        left = length
        while left > 0:
            data = repo.read_blob(next(blobs))
            yield data
            left -= len(data)
            pos += len(data)
    while pos < node.size:
        n = min(CHUNK, node.size - pos)
        yield bytes(n)
        pos += n


class _ContentReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def walk(repo: Repository, node: Node, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
    """``(path, node)`` for ``node`` and everything under it, in the order backup walked
    them (pre-order, names sorted), so a hardlink's first name always comes first."""
    yield prefix, node
    if node.type != "dir" or node.subtree is None:
        return
    stack: list[tuple[bytes, Iterator[Node]]] = [(prefix, iter(repo.load_tree(node.subtree)))]
    while stack:
        base, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        path = base + b"/" + child.name if base else child.name
        yield path, child
        if child.type == "dir" and child.subtree is not None:
            stack.append((path, iter(repo.load_tree(child.subtree))))


def _pax_time(ns: int) -> str:
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{'-' if ns < 0 else ''}{sec}.{frac:09d}"


_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def write_tar(repo: Repository, snap: Snapshot, path: str | bytes, out: IO[bytes]) -> int:
    """Write the tree at ``path`` as a PAX tar stream to ``out``; returns members written.

    Member names are relative to ``path`` (its own entry is ``.``), so the stream unpacks
    into the folder that should receive it. Hardlinks inside the tree stay hardlinks; a
    hardlink whose first name lies outside ``path`` is sent as a copy.
    """
    repo = _view(repo, snap)
    top = find(repo, snap, path)
    base = b"/".join(split_path(path))
    count = 0
    sent: set[bytes] = set()
    with tarfile.open(
        fileobj=out,
        mode="w|",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    ) as tar:
        for rel, node in walk(repo, top, b""):
            info = tarfile.TarInfo(os.fsdecode(rel) if rel else ".")
            info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
            info.uname = info.gname = ""
            info.mtime = node.mtime_ns // 1_000_000_000
            pax = {"mtime": _pax_time(node.mtime_ns), "atime": _pax_time(node.atime_ns)}
            for name, value in sorted((node.xattrs or {}).items()):
                try:
                    pax["SCHILY.xattr." + name.decode("ascii")] = value.decode("utf-8")
                except UnicodeDecodeError:
                    key = "LIBARCHIVE.xattr." + name.decode("ascii", "replace")
                    pax[key] = base64.b64encode(value).decode("ascii")
            info.pax_headers = pax
            fileobj: IO[bytes] | None = None
            link = node.link
            if link is not None and base:
                inside = link.startswith(base + b"/")
                link = link[len(base) + 1 :] if inside else None
            if link is not None and link in sent:
                info.type, info.linkname = tarfile.LNKTYPE, os.fsdecode(link)
            elif node.type == "file":
                if node.link is not None:
                    node = find(repo, snap, node.link)  # the first name outside: a copy
                if node.error is not None:
                    continue
                info.type, info.size = tarfile.REGTYPE, node.size
                fileobj = io.BufferedReader(_ContentReader(iter_content(repo, node)), CHUNK)
                sent.add(rel)
            else:
                info.type = _TAR_TYPES[node.type]
                if node.type == "symlink":
                    info.linkname = os.fsdecode(node.target or b"")
                if node.rdev is not None:
                    info.devmajor, info.devminor = node.rdev
                if node.type in ("fifo", "chr", "blk"):
                    sent.add(rel)
            tar.addfile(info, fileobj)
            count += 1
    return count


def write_zip(repo: Repository, snap: Snapshot, path: str | bytes, out: IO[bytes]) -> int:
    """Write the tree at ``path`` as a zip stream (for browsers): folders and regular
    files, symlinks as small files holding their target; FIFOs and devices are left out.
    Returns the number of entries."""
    repo = _view(repo, snap)
    top = find(repo, snap, path)
    count = 0
    with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for rel, node in walk(repo, top, b""):
            if node.type in ("fifo", "chr", "blk") or not rel and node.type != "file":
                continue
            # Zip names must be text: a name that is not UTF-8 is shown with U+FFFD.
            name = (rel or (split_path(path) or [b"file"])[-1]).decode("utf-8", "replace")
            stamp = time.gmtime(max(node.mtime_ns // 1_000_000_000, 315532800))[:6]
            if node.type == "dir":
                info = zipfile.ZipInfo(name + "/", date_time=stamp)
                info.external_attr = (0o40000 | node.mode) << 16
                zf.writestr(info, b"")
            elif node.type == "symlink":
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.external_attr = (0o120000 | 0o777) << 16
                zf.writestr(info, node.target or b"")
            else:
                if node.link is not None:
                    node = find(repo, snap, node.link)
                if node.error is not None:
                    continue
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.external_attr = (0o100000 | node.mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, mode="w", force_zip64=node.size > 2**31) as dst:
                    for chunk in iter_content(repo, node):
                        dst.write(chunk)
            count += 1
    return count
