"""Build folder trees that exercise every fidelity item, and describe trees for comparison.

- ``make_fidelity_tree(root)`` fills ``root`` with one of everything DESIGN.md's
  "Fidelity" section promises to keep (the root-only parts — owners, device nodes — only
  when running as root) and returns a ``FidelityTree`` naming the notable entries.
- ``snapshot_of_tree(root)`` records every attribute a restore must reproduce, keyed by
  relative path (bytes; ``b""`` is ``root`` itself), plus the hardlink groups under the
  str key ``HARDLINKS``. Two trees are identical for hometier when their snapshots are
  equal. Sockets are left out (backups skip them by design).

Everything works on bytes paths, so names that are not UTF-8 or hold newlines are fine.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import stat
from dataclasses import dataclass
from typing import Any

HARDLINKS = "hardlinks"
"""Key of the hardlink groups in a ``snapshot_of_tree`` result (a str: paths are bytes)."""

MiB = 1024 * 1024
IS_ROOT = os.geteuid() == 0
_O_NOATIME = getattr(os, "O_NOATIME", 0)


def fsb(path: str | bytes | os.PathLike[Any]) -> bytes:
    return os.fsencode(path)


# --- describing a tree ---------------------------------------------------------------


def _open_quietly(path: bytes) -> int:
    """Open for reading without touching the atime when the kernel lets us."""
    if _O_NOATIME:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _O_NOATIME)
        except PermissionError:
            pass
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def content_hash(path: str | bytes | os.PathLike[Any]) -> str:
    fd = _open_quietly(fsb(path))
    try:
        h = hashlib.blake2b(digest_size=20)
        while True:
            block = os.read(fd, 4 * MiB)
            if not block:
                return h.hexdigest()
            h.update(block)
    finally:
        os.close(fd)


def user_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        if name.startswith("user."):
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
    return out


_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "socket",
}


def describe(full: bytes, st: os.stat_result, *, atime: bool = True) -> dict[str, Any]:
    """The attributes of one entry that a restore must reproduce."""
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    d: dict[str, Any] = {
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }
    if kind == "file":
        d["size"] = st.st_size
        if atime:
            # Only files: reading a folder (or following a link) moves its atime.
            d["atime_ns"] = st.st_atime_ns
        d["content"] = content_hash(full)
    elif kind == "symlink":
        d["target"] = os.readlink(full)
    elif kind in ("chr", "blk"):
        d["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if kind != "symlink":
        d["xattrs"] = user_xattrs(full)
    return d


def snapshot_of_tree(
    root: str | bytes | os.PathLike[Any], *, atime: bool = True, include_root: bool = True
) -> dict[Any, Any]:
    """Every restorable attribute of every entry under ``root``, for ``==`` comparison.

    Keys are paths relative to ``root`` (bytes, ``b""`` for ``root`` itself unless
    ``include_root`` is false); ``HARDLINKS`` holds the groups of paths sharing an inode
    (a set of frozensets, groups of two or more). Files are read without moving their
    atime (O_NOATIME) and their atime is recorded before reading. Sockets are omitted.
    """
    base = fsb(root)
    out: dict[Any, Any] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    st = os.lstat(base)
    if include_root:
        root_desc = describe(base, st, atime=atime)
        out[b""] = root_desc
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = base + b"/" + rel if rel else base
        for name in sorted(os.listdir(full)):
            sub = rel + b"/" + name if rel else name
            path = base + b"/" + sub
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                continue
            out[sub] = describe(path, st, atime=atime)
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(sub)
    out[HARDLINKS] = {frozenset(g) for g in inodes.values() if len(g) > 1}
    return out


def diff_trees(a: dict[Any, Any], b: dict[Any, Any], limit: int = 20) -> str:
    """A short human-readable difference of two ``snapshot_of_tree`` results."""
    lines = []
    for key in sorted(set(a) | set(b), key=repr):
        if a.get(key) != b.get(key):
            lines.append(f"{key!r}:\n   - {a.get(key)!r}\n   + {b.get(key)!r}")
    return "\n".join(lines[:limit]) + (
        f"\n... {len(lines) - limit} more" if len(lines) > limit else ""
    )


def assert_same_tree(expected: dict[Any, Any], actual: dict[Any, Any]) -> None:
    assert expected == actual, "trees differ:\n" + diff_trees(expected, actual)


def allocated(path: str | bytes | os.PathLike[Any]) -> int:
    """Bytes a file really occupies on disk."""
    return os.lstat(fsb(path)).st_blocks * 512


# --- building the fidelity tree ------------------------------------------------------


@dataclass(frozen=True)
class FidelityTree:
    """Relative paths (bytes) of the entries tests look at individually."""

    root: bytes
    big: bytes
    sparse: bytes
    hole_only: bytes
    socket: bytes | None
    big_size: int
    sparse_size: int
    root_only: bool

    def path(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel


def _write(path: bytes, data: bytes, mode: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(path, mode)


def _bind_socket(path: bytes) -> bytes | None:
    """Create a unix socket file at ``path`` (through /proc so that long paths work)."""
    parent, name = os.path.split(path)
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"/proc/self/fd/{dfd}/".encode() + name)
        finally:
            sock.close()
    finally:
        os.close(dfd)
    return path


def make_fidelity_tree(
    root: str | bytes | os.PathLike[Any],
    *,
    big_size: int = 12 * MiB,
    sparse_size: int = 50 * MiB,
    seed: int = 1234,
) -> FidelityTree:
    """Fill ``root`` (created if absent) with one of everything hometier must restore.

    Regular files of several sizes (empty, small, a ``big_size`` random file that the
    chunker cuts into several blobs, a highly compressible one), nested and empty
    folders, sticky and setgid folders, a setuid file, modes 0o000 and 0o444, numeric
    owners 1234:5678 (root only), nanosecond mtimes/atimes on files, folders and
    symlinks, symlinks (relative, absolute, dangling, to a folder, non-UTF-8 target), a
    group of three hardlinks, ``user.*`` xattrs on a file and a folder, a sparse file and
    an all-hole file, a FIFO, char and block device nodes (root only), names that are not
    UTF-8 or hold newlines, and a unix socket (which backups skip and report).
    """
    rng = random.Random(seed)
    base = fsb(root)
    os.makedirs(base, exist_ok=True)

    def p(rel: bytes) -> bytes:
        return base + b"/" + rel

    # Folders, nested and empty.
    for rel in (
        b"a",
        b"a/b",
        b"a/b/c",
        b"a/b/c/d",
        b"empty-dir",
        b"a/b/empty-too",
        b"sticky",
        b"setgid",
        b"xattr-dir",
        b"\xff\xfe-dir",
        b"dir\nwith newline",
    ):
        os.mkdir(p(rel))
    os.chmod(p(b"sticky"), 0o1777)
    os.chmod(p(b"setgid"), 0o2775)

    # Regular files of several sizes.
    _write(p(b"empty"), b"")
    _write(p(b"small.txt"), b"hello, world\n" * 10)
    _write(p(b"a/b/c/d/deep.txt"), b"deep inside\n")
    _write(p(b"medium.bin"), rng.randbytes(300 * 1024))
    _write(p(b"big.bin"), rng.randbytes(big_size))
    _write(p(b"compressible.txt"), b"all work and no play makes jack a dull boy\n" * 50_000)
    _write(p(b"sticky/inside"), b"in a sticky folder\n")
    _write(p(b"setgid/inside"), b"in a setgid folder\n")

    # Modes.
    _write(p(b"setuid"), b"#!/bin/sh\nexit 0\n", 0o4755)
    _write(p(b"setgid-file"), b"#!/bin/sh\nexit 0\n", 0o2755)
    if IS_ROOT:  # anyone else could not archive it (nor hash it here)
        _write(p(b"no-permissions"), b"nobody may read this\n", 0o000)
    _write(p(b"read-only"), b"look, do not touch\n", 0o444)
    os.chmod(p(b"a/b/c"), 0o750)

    # Names that are bytes.
    _write(p(b"\xff\xfe"), b"latin-1 name\n")
    _write(p(b"\xff\xfe-dir/caf\xe9"), b"caf\xe9\n")
    _write(p(b"line\nbreak"), b"a newline in the name\n")
    _write(p(b"dir\nwith newline/file\nname"), b"more newlines\n")
    _write(p("snowman-\u2603".encode()), b"utf-8 name\n")

    # Symlinks: stored as links, never followed.
    os.symlink(b"small.txt", p(b"link-relative"))
    os.symlink(b"/etc", p(b"link-absolute-dir"))
    os.symlink(b"/etc/hostname", p(b"link-absolute-file"))
    os.symlink(b"does/not/exist", p(b"link-dangling"))
    os.symlink(b"a/b", p(b"link-to-dir"))
    os.symlink(b"../../small.txt", p(b"a/b/link-up"))
    os.symlink(b"\xff\xfe", p(b"link-non-utf8"))

    # Hardlinks: a group of three across folders.
    _write(p(b"hardlink-1"), b"one inode, three names\n", 0o640)
    os.link(p(b"hardlink-1"), p(b"a/hardlink-2"))
    os.link(p(b"hardlink-1"), p(b"a/b/hardlink-3"))

    # Extended attributes.
    _write(p(b"xattr-file"), b"has attributes\n")
    os.setxattr(p(b"xattr-file"), b"user.comment", b"a comment")
    os.setxattr(p(b"xattr-file"), b"user.binary", bytes(range(256)))
    os.setxattr(p(b"xattr-dir"), b"user.dir", b"on a folder")

    # Sparse files: 50 MiB with a few bytes in the middle; and one that is all hole.
    fd = os.open(p(b"sparse"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, sparse_size)
        os.pwrite(fd, b"an island in the middle", sparse_size // 2)
    finally:
        os.close(fd)
    fd = os.open(p(b"hole-only"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, 10 * MiB)
    finally:
        os.close(fd)

    # Special files.
    os.mkfifo(p(b"fifo"), 0o640)
    if IS_ROOT:
        os.mknod(p(b"char-dev"), 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(p(b"block-dev"), 0o660 | stat.S_IFBLK, os.makedev(7, 0))
        os.chown(p(b"char-dev"), 0, 5)
    sock = _bind_socket(p(b"socket"))

    # Numeric owners (root only): a file, a folder, a symlink.
    if IS_ROOT:
        os.chown(p(b"a/b/c/d/deep.txt"), 1234, 5678)
        os.chown(p(b"a/b"), 2345, 6789)
        os.chown(p(b"link-relative"), 3456, 7890, follow_symlinks=False)
        os.chown(p(b"setuid"), 1234, 5678)
        os.chmod(p(b"setuid"), 0o4755)  # chown clears setuid
        os.chown(p(b"setgid"), 4321, 8765)
        os.chmod(p(b"setgid"), 0o2775)

    # Nanosecond times on every entry, folders last (creating entries moves their mtime).
    set_times(base, seed=seed)
    return FidelityTree(
        root=base,
        big=b"big.bin",
        sparse=b"sparse",
        hole_only=b"hole-only",
        socket=b"socket" if sock else None,
        big_size=big_size,
        sparse_size=sparse_size,
        root_only=IS_ROOT,
    )


def set_times(root: bytes, *, seed: int = 0) -> None:
    """Give every entry under ``root`` (and ``root``) distinct nanosecond times.

    Children before parents, so that setting a child's times does not move anything
    whose times were already set.
    """
    rng = random.Random(seed)
    entries: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        for name in dirnames + filenames:
            entries.append(dirpath + b"/" + name)
    for path in sorted(entries, key=lambda e: -e.count(b"/")) + [root]:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            continue
        mtime = rng.randrange(10**17, 17 * 10**17)  # 1973 .. 2023, odd nanoseconds
        atime = rng.randrange(10**17, 17 * 10**17)
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def record_calls(store: Any, method: str) -> list[str]:
    """Replace ``store.<method>`` (``get``, ``list``, ...) on this one store object with
    a wrapper that records the first argument (a key or prefix) of every call, and
    return that record."""
    seen: list[str] = []
    real = getattr(store, method)

    def wrapper(first: str, *a: Any, **kw: Any) -> Any:
        seen.append(first)
        return real(first, *a, **kw)

    setattr(store, method, wrapper)
    return seen
