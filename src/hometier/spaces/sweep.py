"""Write a space's ACLs on every folder and file in it, through descriptors only.

Members control a space's contents and may race any step (THREATS.md), so the walk:

- reaches every entry relative to its folder's descriptor, never by a path string;
- opens folders with ``O_DIRECTORY|O_NOFOLLOW`` and files with ``O_PATH|O_NOFOLLOW``
  (no open side effects, no FIFO waits), and acts only after ``fstat`` on the descriptor
  says what it is: a name swapped for a symlink, a FIFO or another folder between the
  listing and the open is skipped and counted in ``raced``, never followed;
- writes ACLs and owners on the open inode (``fsetxattr`` on a folder descriptor,
  ``/proc/self/fd/N`` for an ``O_PATH`` file descriptor, which names that inode and
  nothing else);
- checks that each folder it descends into still has the folder it came from as its
  ``..`` and lives on the space's filesystem: a folder moved away mid-walk is left
  alone (``moved``), other filesystems mounted inside are not entered;
- writes an attribute only when it differs, so an unchanged space keeps its ctimes and
  the next incremental archive reads nothing.

Symlinks, FIFOs, sockets and devices carry no ACL and are skipped. Files owned by a user
who lost write access (``disown``) are given to root, so that being a file's owner is no
way around the ACL. The spaces root must be a mount point of its own (``posix``):
nothing can then be hard-linked or renamed into a space from outside it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from hometier.spaces.acl import ACCESS, DEFAULT, Acl, Grants, file_acl, folder_acls

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH = getattr(os, "O_PATH", 0o10000000) | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 512
"""Folders deeper than this are not entered (each level holds a descriptor)."""
_RACE = (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EXDEV)


@dataclass
class SweepStats:
    dirs: int = 0
    files: int = 0
    changed: int = 0
    """Entries whose ACL (or owner) was written."""
    skipped: int = 0
    """Symlinks, FIFOs, sockets, devices, other filesystems, folders too deep."""
    raced: int = 0
    """Entries that changed between the listing and the open (a swap that landed)."""
    moved: int = 0
    """Folders moved out of their parent while the walk was inside the space."""
    disowned: int = 0
    bytes: int = 0
    newest_ns: int = 0


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _get(target: int | str, name: str) -> bytes | None:
    try:
        return os.getxattr(target, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _put(target: int | str, name: str, acl: Acl) -> bool:
    raw = acl.encode()
    if _get(target, name) == raw:
        return False
    os.setxattr(target, name, raw)
    return True


def open_beneath(root_fd: int, rel: str) -> int:
    """Open the folder ``rel`` under ``root_fd`` one component at a time, never through
    a symlink (``OSError`` ELOOP/ENOTDIR if a component is not a real folder)."""
    fd = os.dup(root_fd)
    try:
        for part in rel.split("/"):
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, f"bad path component in {rel!r}")
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def set_top(fd: int, grants: Grants, gid: int, *, public: bool) -> bool:
    """The space's own folder: root's, the space's group, setgid (new entries take the
    group), and the grants as access and default ACL."""
    st = os.fstat(fd)
    changed = False
    if (st.st_uid, st.st_gid) != (0, gid):
        os.fchown(fd, 0, gid)
        changed = True
    # The group and other bits follow the ACL (mask, other) once it is written.
    want = 0o2770 | (0o005 if public else 0)
    if stat.S_IMODE(st.st_mode) & 0o7700 != want & 0o7700:
        os.fchmod(fd, want)
        changed = True
    access, default = folder_acls(grants)
    changed |= _put(fd, ACCESS, access)
    changed |= _put(fd, DEFAULT, default)
    return changed


def sweep(
    top_fd: int,
    grants: Grants | None,
    *,
    disown: frozenset[int] = frozenset(),
    on_entry: object = None,
) -> SweepStats:
    """Apply ``grants`` to everything below the open space folder ``top_fd`` (not to the
    folder itself: ``set_top``); ``grants=None`` only measures (size, newest time).
    ``on_entry`` is for tests: called with no argument before each entry is opened."""
    stats = SweepStats()
    top = os.fstat(top_fd)
    dev = top.st_dev
    dacl = folder_acls(grants) if grants is not None else None
    # Each frame: (folder descriptor, its (dev, ino), names of its subfolders to visit).
    stack: list[tuple[int, tuple[int, int], list[bytes]]] = []
    first = _visit(top_fd, grants, disown, stats, dev, on_entry)
    stack.append((os.dup(top_fd), (dev, top.st_ino), first))
    try:
        while stack:
            fd, ident, todo = stack[-1]
            if not todo:
                stack.pop()
                os.close(fd)
                continue
            name = todo.pop()
            if callable(on_entry):
                on_entry()
            try:
                sub = os.open(name, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _RACE:
                    stats.raced += 1
                    continue
                raise
            try:
                sst = os.fstat(sub)
                up = os.stat("..", dir_fd=sub, follow_symlinks=False)
            except OSError:
                os.close(sub)
                stats.raced += 1
                continue
            if sst.st_dev != dev:
                os.close(sub)
                stats.skipped += 1
                continue
            if (up.st_dev, up.st_ino) != ident:
                os.close(sub)
                stats.moved += 1
                continue
            if len(stack) >= MAX_DEPTH:
                os.close(sub)
                stats.skipped += 1
                continue
            stats.dirs += 1
            stats.newest_ns = max(stats.newest_ns, sst.st_mtime_ns, sst.st_ctime_ns)
            if dacl is not None and grants is not None:
                access, default = folder_acls(grants, owner_perm=(sst.st_mode >> 6) & 7)
                wrote = _put(sub, ACCESS, access) | _put(sub, DEFAULT, default)
                if sst.st_uid in disown:
                    os.fchown(sub, 0, -1)
                    stats.disowned += 1
                    wrote = True
                stats.changed += int(wrote)
            stack.append(
                (sub, (sst.st_dev, sst.st_ino), _visit(sub, grants, disown, stats, dev, on_entry))
            )
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return stats


def _visit(
    fd: int,
    grants: Grants | None,
    disown: frozenset[int],
    stats: SweepStats,
    dev: int,
    on_entry: object,
) -> list[bytes]:
    """Apply to the files of the open folder ``fd``; return its subfolders' names."""
    folders: list[bytes] = []
    with os.scandir(fd) as it:
        listed = [
            (os.fsencode(e.name), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
            for e in it
        ]
    for name, is_dir, is_file in listed:
        if is_dir:
            folders.append(name)
            continue
        if not is_file:
            stats.skipped += 1
            continue
        if callable(on_entry):
            on_entry()
        try:
            f = os.open(name, _PATH, dir_fd=fd)
        except OSError as exc:
            if exc.errno in _RACE:
                stats.raced += 1
                continue
            raise
        try:
            st = os.fstat(f)
            if not stat.S_ISREG(st.st_mode) or st.st_dev != dev:
                stats.raced += 1
                continue
            stats.files += 1
            stats.bytes += st.st_size
            stats.newest_ns = max(stats.newest_ns, st.st_mtime_ns, st.st_ctime_ns)
            if grants is None:
                continue
            target = _proc(f)
            wrote = _put(target, ACCESS, file_acl(grants, st.st_mode))
            if st.st_uid in disown:
                os.chown(target, 0, -1)
                stats.disowned += 1
                wrote = True
            stats.changed += int(wrote)
        finally:
            os.close(f)
    return folders
