"""The mount system calls, through ``ctypes``, and root-safe folders inside homes.

``mount(8)`` and ``umount(8)`` stat their arguments first, which hangs or fails on a FUSE
mount whose daemon died; the calls here go straight to the kernel. Every target inside a
folder a user controls (a home) is reached as THREATS.md says: one component at a time
with ``O_NOFOLLOW`` from a descriptor of the home, folders created with the user's own
file-system identity (``setfsuid``), and the mount made on ``/proc/self/fd/N`` of the
opened folder, so that a symlink swapped in meanwhile cannot redirect it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_fs_lock = threading.Lock()


def _check(ret: int, what: str, path: str | os.PathLike[str]) -> None:
    if ret != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", os.fspath(path))


def _b(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    ret = _libc.mount(
        _b(source), _b(target), fstype.encode() if fstype else None, flags, data and data.encode()
    )
    _check(ret, "mount", target)


def bind(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Bind ``source`` (its top mount) on ``target``."""
    mount(source, target, None, MS_BIND)


def make(target: str | os.PathLike[str], propagation: int) -> None:
    """Set the propagation type (``MS_SHARED``, ``MS_SLAVE``, ``MS_PRIVATE``)."""
    mount(None, target, None, propagation)


def remount_read_only(target: str | os.PathLike[str]) -> None:
    """Make one bind mount read-only (writes through it get EROFS)."""
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def umount(target: str | os.PathLike[str], *, detach: bool = False, nofollow: bool = False) -> None:
    """Unmount the top mount at ``target``; ``OSError(EBUSY)`` while it is in use unless
    ``detach`` (lazy: the mount disappears now, the file system when unused). With
    ``nofollow`` a symlink as the last component is refused, not followed."""
    flags = (MNT_DETACH if detach else 0) | (UMOUNT_NOFOLLOW if nofollow else 0)
    _check(_libc.umount2(_b(target), flags), "umount", target)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def fd_mount_id(fd: int) -> int:
    """The id of the mount an open descriptor lives on (``mnt_id`` in fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "no mnt_id in fdinfo")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def fs_identity(uid: int, gid: int) -> Iterator[None]:
    """File-system uid/gid of the calling thread, for the block (setfsuid/setfsgid).

    Held under a process-wide lock: glibc applies them to the thread only, but nothing
    else in hometier may run as someone else meanwhile on this thread pool.
    """
    with _fs_lock:
        old_gid = _libc.setfsgid(gid)
        old_uid = _libc.setfsuid(uid)
        try:
            yield
        finally:
            _libc.setfsuid(old_uid)
            _libc.setfsgid(old_gid)


def open_dir(base_fd: int, parts: list[str], *, create_as: tuple[int, int] | None = None) -> int:
    """Open the folder ``parts`` below ``base_fd``, one component at a time, never
    following a symlink; with ``create_as=(uid, gid)`` missing folders are made (0755)
    with that identity. Returns an ``O_PATH`` descriptor (the caller closes it).

    ``OSError(ELOOP/ENOTDIR)`` if a component is a symlink or not a folder.
    """
    fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
    try:
        for name in parts:
            if name in ("", ".", "..") or "/" in name:
                raise OSError(errno.EINVAL, "bad path component", name)
            try:
                nxt = os.open(
                    name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except FileNotFoundError:
                if create_as is None:
                    raise
                with fs_identity(*create_as), contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(
                    name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a folder", "/".join(parts))
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_home(path: str | os.PathLike[str]) -> int:
    """An ``O_PATH`` descriptor of a home folder itself (no symlink as its last part)."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


__all__ = [
    "MS_PRIVATE",
    "MS_SHARED",
    "MS_SLAVE",
    "bind",
    "boot_id",
    "fd_mount_id",
    "fd_path",
    "fs_identity",
    "make",
    "mount",
    "open_dir",
    "open_home",
    "remount_read_only",
    "umount",
]
