"""Filesystem helpers the standard library lacks: rename without replacing."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(
    src: bytes | str,
    dst: bytes | str,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with ``FileExistsError`` if ``dst``
    exists (Linux ``renameat2(RENAME_NOREPLACE)``), paths relative to the given folder
    descriptors. Where the kernel or filesystem lacks it, falls back to a check then
    ``rename`` (a small window)."""
    s, d = os.fsencode(src), os.fsencode(dst)
    sfd = _AT_FDCWD if src_dir_fd is None else src_dir_fd
    dfd = _AT_FDCWD if dst_dir_fd is None else dst_dir_fd
    if _renameat2 is not None:
        if _renameat2(sfd, s, dfd, d, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), os.fsdecode(s), None, os.fsdecode(d))
    try:
        os.stat(d, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(s, d, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(d))


def remove_tree(name: bytes | str, dir_fd: int) -> None:
    """Remove the folder ``name`` (relative to ``dir_fd``) and everything in it.

    Iterative, so depth is no limit (``shutil.rmtree`` recurses once per level in
    Python 3.11), and never follows a symlink. Missing entries are not an error.
    """
    top = os.fsencode(name)
    stack: list[tuple[bytes, bool]] = [(top, False)]
    while stack:
        rel, emptied = stack.pop()
        if emptied:
            try:
                os.rmdir(rel, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            continue
        try:
            st = os.stat(rel, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not (st.st_mode & 0o170000 == 0o040000):
            os.unlink(rel, dir_fd=dir_fd)
            continue
        fd = os.open(
            rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        stack.append((rel, True))
        for child in names:
            stack.append((rel + b"/" + os.fsencode(child), False))


def remove_path(path: str | os.PathLike[str]) -> None:
    """``remove_tree`` for a path: the folder at ``path`` and everything in it."""
    parent, name = os.path.split(os.path.abspath(os.fsencode(path)))
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree(name, fd)
    finally:
        os.close(fd)
