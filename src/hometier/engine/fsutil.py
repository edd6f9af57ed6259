"""Root-safe filesystem primitives: everything by descriptor, nothing by path string.

hometier runs as root inside folders its users control (THREATS.md). The helpers here
never resolve a multi-part path under such a folder: a folder is opened once
(``O_DIRECTORY|O_NOFOLLOW``) and every later call names one component relative to that
descriptor, so a user who swaps a folder for a symlink (or exchanges two folders with
``RENAME_EXCHANGE``) mid-operation can only redirect hometier to places they could
already reach themselves.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import secrets
import stat
from collections.abc import Iterator

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's (no ldconfig run)
_renameat2 = getattr(_libc, "renameat2", None)
_syscall = _libc.syscall
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Swapped(OSError):
    """A folder is no longer the one that was opened or listed (a user replaced it)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ESTALE, f"{what} was replaced while in use")


def _b(name: bytes | str) -> bytes:
    return os.fsencode(name)


def renameat2(
    src: bytes | str,
    dst: bytes | str,
    flags: int,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """``renameat2(2)``; raises ``OSError`` (``EINVAL`` where the filesystem lacks
    ``flags``: NFS has neither ``RENAME_NOREPLACE`` nor ``RENAME_EXCHANGE``)."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    sfd = _AT_FDCWD if src_dir_fd is None else src_dir_fd
    dfd = _AT_FDCWD if dst_dir_fd is None else dst_dir_fd
    s, d = _b(src), _b(dst)
    if _renameat2(sfd, s, dfd, d, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(s), None, os.fsdecode(d))


def rename_noreplace(
    src: bytes | str,
    dst: bytes | str,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with ``FileExistsError`` if ``dst``
    exists (``renameat2(RENAME_NOREPLACE)``), names relative to the given descriptors.
    Where the filesystem lacks it (NFS), falls back to a check then ``rename``: callers
    use it only where nobody but hometier creates names (a root-owned folder) or hold
    the home's lock, so the window is with hometier itself."""
    try:
        renameat2(src, dst, RENAME_NOREPLACE, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))


def rename_exchange(a: bytes | str, b: bytes | str, *, a_dir_fd: int, b_dir_fd: int) -> bool:
    """Swap two names atomically (``RENAME_EXCHANGE``); False where the filesystem cannot
    (the caller then renames in two steps)."""
    try:
        renameat2(a, b, RENAME_EXCHANGE, src_dir_fd=a_dir_fd, dst_dir_fd=b_dir_fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise


def open_dir(
    name: bytes | str, dir_fd: int | None = None, *, expect: os.stat_result | None = None
) -> int:
    """Open a folder without following a symlink at its last component; with ``expect``,
    ``Swapped`` unless it is that very folder (device and inode)."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if expect is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            os.close(fd)
            raise Swapped(os.fsdecode(name))
    return fd


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_beneath(root_fd: int, rel: bytes | str, flags: int = DIR_FLAGS, mode: int = 0) -> int:
    """Open ``rel`` (several components) strictly beneath ``root_fd``: no symlink in any
    component, no ``..`` above the root, no crossing into another mount. Uses
    ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV)`` (Linux 5.6), else
    walks one component at a time with ``O_NOFOLLOW`` and a device check."""
    parts = [p for p in _b(rel).split(b"/") if p and p != b"."]
    if b".." in parts:
        raise OSError(errno.EXDEV, "path leaves its folder", os.fsdecode(rel))
    if not parts:
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=root_fd)
    if _SYS_OPENAT2 is not None:
        how = _OpenHow(
            flags | os.O_CLOEXEC, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_XDEV
        )
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(b"/".join(parts)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp filters in containers
            raise OSError(err, os.strerror(err), os.fsdecode(rel))
    dev = os.fstat(root_fd).st_dev
    cur = root_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, DIR_FLAGS, dir_fd=cur)
            if cur != root_fd:
                os.close(cur)
            cur = nxt
            if os.fstat(cur).st_dev != dev:
                raise OSError(errno.EXDEV, "path crosses a mount", os.fsdecode(rel))
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
    finally:
        if cur != root_fd:
            os.close(cur)
    return fd


def make_private_dir(name: bytes | str, dir_fd: int, mode: int = 0o700) -> int:
    """Create a folder and open it, proving it is the one just made: owned by this
    process's user and with no group/other access (``Swapped`` otherwise). Returns the
    open descriptor; ``FileExistsError`` if the name is taken."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise Swapped(os.fsdecode(name))
    return fd


def ensure_private_root(path: str | os.PathLike[str]) -> None:
    """Make ``path`` a folder only its owner (this process's user) can enter: create it
    0700, or narrow an existing one to 0700. Refuses (``PermissionError``) a symlink or a
    folder owned by someone else: hometier keeps its quarantine, locks and staging there."""
    p = os.fsencode(path)
    try:
        os.mkdir(p, 0o700)
    except FileExistsError:
        pass
    fd = os.open(p, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(
                errno.EPERM, "folder is not owned by hometier's user", os.fsdecode(p)
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def write_new_file(dir_fd: int, name: bytes | str, data: bytes, mode: int = 0o444) -> bool:
    """Create ``name`` in the folder ``dir_fd`` holding ``data``: written under a fresh
    temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``), then renamed into place without
    replacing anything. False (and nothing left behind) if ``name`` is taken."""
    tmp = b".%s.%s.tmp" % (_b(name)[:200], secrets.token_hex(6).encode())
    fd = os.open(tmp, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        rename_noreplace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    except FileExistsError:
        return False
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _entries(fd: int) -> Iterator[bytes]:
    with os.scandir(fd) as it:
        for e in it:
            yield os.fsencode(e.name)


def remove_tree(name: bytes | str, dir_fd: int) -> None:
    """Remove the folder ``name`` (relative to ``dir_fd``) and everything in it.

    Depth first through descriptors: each folder is opened (``O_NOFOLLOW``) relative to
    its parent's descriptor and checked to be the entry just listed (device and inode),
    entries are removed with ``unlinkat``/``rmdir`` relative to it. A folder swapped for a
    symlink is removed as a symlink, never followed; a folder swapped for another folder
    is not entered. Never descends into another filesystem. Iterative (depth is no
    limit but open descriptors). Missing entries are not an error; anything else (a
    mount point, a folder that refills) raises ``OSError`` with what was left.
    """
    top = _b(name)
    try:
        st = os.stat(top, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top, dir_fd=dir_fd)
        return
    _raise_fd_limit()
    dev = st.st_dev
    root = open_dir(top, dir_fd, expect=st)
    # Each frame: (folder fd, its name in the parent, its entries still to look at).
    stack: list[tuple[int, bytes, Iterator[bytes]]] = [(root, top, _entries(root))]
    try:
        while stack:
            fd, _me, names = stack[-1]
            child = next(names, None)
            if child is None:
                stack.pop()
                os.close(fd)
                parent = stack[-1][0] if stack else dir_fd
                try:
                    os.rmdir(_me, dir_fd=parent)
                except FileNotFoundError:
                    pass
                continue
            try:
                cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                try:
                    os.unlink(child, dir_fd=fd)
                except FileNotFoundError:
                    pass
                continue
            if cst.st_dev != dev:
                raise OSError(errno.EBUSY, "another filesystem is mounted here", os.fsdecode(child))
            try:
                cfd = open_dir(child, fd, expect=cst)
            except (FileNotFoundError, NotADirectoryError, Swapped):
                continue  # gone or replaced meanwhile: the next listing sees what is there
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                continue  # now a symlink: the parent's next pass unlinks it
            stack.append((cfd, child, _entries(cfd)))
    except BaseException:
        for fd, _n, _it in stack:
            os.close(fd)
        raise


def remove_path(path: str | os.PathLike[str]) -> None:
    """``remove_tree`` for a folder whose parent is root's (a quarantine, a staging
    folder): the parent is opened by path, everything below by descriptor."""
    parent, name = os.path.split(os.path.abspath(os.fsencode(path)))
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree(name, fd)
    finally:
        os.close(fd)
