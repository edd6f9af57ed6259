"""Move a home's folder aside into the quarantine and back, root-safely and atomically.

A home is moved as one folder, never entry by entry: a fresh home (its notice file
already in it, the old home's owner, mode, ACLs and attributes) is prepared in the
quarantine, which only root can enter, and swapped with the home in one
``renameat2(RENAME_EXCHANGE)`` (two renames on filesystems without it, such as NFS).
So nothing is ever written into a folder the user controls, every file keeps its
inode and ctime (a later comparison can check ctime everywhere), and a mount inside
the home cannot leave it half moved. Bringing it back is the same swap the other way.
Entries the user made meanwhile in the stand-in home are merged into the real one,
never replacing anything: a taken name's older entry goes to a conflicts folder.

On the volume, under ``<homes>/.hometier-quarantine/`` (root's, 0700)::

    <key>.<snapshot:12>          an archived home (the home folder itself)
    <key>.<snapshot:12>.fresh    the stand-in being prepared (transient)
    <key>.<snapshot:12>.r        a restore from the bucket being built (transient; .rx: a part)
    <key>.left-<hex>             the stand-in after a restore, until emptied (transient)
    .intents/<key>.json          the move in progress, for ``recover`` after a crash
    .locks/<key>.lock            the home's lock (``locks.home_lock``)

Every call is relative to an open folder descriptor (THREATS.md).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hometier.engine.fsutil import (
    DIR_FLAGS,
    Swapped,
    ensure_private_root,
    make_private_dir,
    open_dir,
    remove_tree,
    rename_exchange,
    rename_noreplace,
    write_new_file,
)
from hometier.engine.restore import make_conflicts_dir
from hometier.engine.xattrs import apply_metadata, read_xattrs
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.homes import HomeLayout

log = logging.getLogger(__name__)

INTENTS = ".intents"
_NOTICE = NOTICE_NAME.encode()


class HomeParentUnsafe(OSError):
    """The folder above a home is not root's: a user could swap the home under us."""


@dataclass
class Moved:
    conflicts: list[str] = field(default_factory=list)
    conflicts_dir: Path | None = None


class Quarantine:
    """The open quarantine root: ``with Quarantine(root) as q: ...``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ensure_private_root(root)
        self.fd = os.open(root, DIR_FLAGS)

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    @staticmethod
    def pending(root: Path, key: str) -> dict[str, Any] | None:
        """The intent recorded for ``key`` under ``root``, without creating anything."""
        try:
            fd = os.open(root / INTENTS / f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as fh:
            try:
                doc = json.loads(fh.read())
            except ValueError:
                return None
        return doc if isinstance(doc, dict) else None

    def exists(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # --- intents: what a move in progress was doing, for recovery -----------------

    def _intents(self) -> int:
        try:
            os.mkdir(INTENTS, 0o700, dir_fd=self.fd)
        except FileExistsError:
            pass
        return open_dir(INTENTS, self.fd)

    def write_intent(self, key: str, doc: dict[str, Any]) -> None:
        fd = self._intents()
        try:
            data = json.dumps(doc, sort_keys=True).encode()
            try:
                os.unlink(f"{key}.json", dir_fd=fd)
            except FileNotFoundError:
                pass
            write_new_file(fd, f"{key}.json", data, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_intent(self, key: str) -> dict[str, Any] | None:
        fd = self._intents()
        try:
            try:
                f = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return None
            with os.fdopen(f, "rb") as fh:
                doc = json.loads(fh.read())
            return doc if isinstance(doc, dict) else None
        except ValueError:
            return None
        finally:
            os.close(fd)

    def clear_intent(self, key: str) -> None:
        fd = self._intents()
        try:
            os.unlink(f"{key}.json", dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def open_home_parent(layout: HomeLayout, user: str) -> tuple[int, str]:
    """The open folder that holds ``user``'s home, and the home's name in it.

    The homes root is the operator's and is opened by path. A template that nests homes
    (``{username}/home``) is walked below it one component at a time without following
    a link; every folder on the way must be root's and writable by nobody else, or a
    user could swap the home between two of hometier's calls (``HomeParentUnsafe``)."""
    path = layout.path(user)
    rel = path.relative_to(layout.root).parts
    fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel[:-1]:
            nxt = open_dir(part, fd)
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise HomeParentUnsafe(
                    errno.EPERM, "the folder above the home is not root's alone", str(path)
                )
    except BaseException:
        os.close(fd)
        raise
    return fd, rel[-1]


def home_attributes(home_fd: int) -> dict[str, Any]:
    """What a stand-in home copies from the real one: owner, mode, attributes, times."""
    st = os.fstat(home_fd)
    return {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "xattrs": read_xattrs(home_fd),
        "times": (st.st_atime_ns, st.st_mtime_ns),
    }


def make_stand_in(q: Quarantine, name: str, attrs: dict[str, Any], notice: str) -> int:
    """Prepare, in the private quarantine, the empty home that takes the real one's
    place: the notice written first (while nobody else can reach the folder), then the
    real home's attributes. Returns its inode."""
    fd = make_private_dir(name, q.fd)
    try:
        write_new_file(fd, NOTICE_NAME, notice.encode(), 0o444)
        apply_metadata(
            fd,
            mode=attrs["mode"],
            uid=attrs["uid"],
            gid=attrs["gid"],
            xattrs=attrs["xattrs"],
            times=None,
            as_root=os.geteuid() == 0,
        )
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def swap_into_place(q: Quarantine, incoming: str, parent_fd: int, home: str, outgoing: str) -> bool:
    """Put the folder ``incoming`` (in the quarantine) where the home is; the home folder
    that was there (if any) ends up in the quarantine as ``outgoing``. Atomic where the
    filesystem has ``RENAME_EXCHANGE``; elsewhere (NFS) two renames, with a moment when
    the home's name is missing. Returns True if there was a home folder to move out."""
    try:
        os.stat(home, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        rename_noreplace(incoming, home, src_dir_fd=q.fd, dst_dir_fd=parent_fd)
        return False
    if rename_exchange(incoming, home, a_dir_fd=q.fd, b_dir_fd=parent_fd):
        if incoming != outgoing:
            rename_noreplace(incoming, outgoing, src_dir_fd=q.fd, dst_dir_fd=q.fd)
        return True
    rename_noreplace(home, outgoing, src_dir_fd=parent_fd, dst_dir_fd=q.fd)
    rename_noreplace(incoming, home, src_dir_fd=q.fd, dst_dir_fd=parent_fd)
    return True


def is_our_notice(dir_fd: int, name: bytes = _NOTICE) -> bool:
    """True if ``name`` in the folder is hometier's notice: a regular file owned by root
    (anything else by that name is the user's, and is kept)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def merge_leftovers(
    src_fd: int, dst_fd: int, tag: str, owner: tuple[int, int], *, newer: bool
) -> Moved:
    """Move every entry of ``src_fd`` into ``dst_fd`` (one rename each, by descriptor),
    never replacing anything; hometier's own notice is left behind.

    On a taken name: with ``newer`` the incoming entry is the newer one (the user made
    it while the home was aside), so it takes the name and the older entry moves into
    the conflicts folder; otherwise the incoming entry goes there. Nothing is lost."""
    moved = Moved()
    box: tuple[bytes, int] | None = None
    try:
        for name in sorted(map(os.fsencode, os.listdir(src_fd))):
            if name == _NOTICE and is_our_notice(src_fd):
                continue
            try:
                rename_noreplace(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                continue
            except FileExistsError:
                pass
            if box is None:
                box = make_conflicts_dir(dst_fd, tag, *owner)
            if newer:
                rename_noreplace(name, name, src_dir_fd=dst_fd, dst_dir_fd=box[1])
                rename_noreplace(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            else:
                rename_noreplace(name, name, src_dir_fd=src_fd, dst_dir_fd=box[1])
            moved.conflicts.append(os.fsdecode(name))
            log.warning("kept both versions of %s; the older is in %s", name, box[0])
    finally:
        if box is not None:
            os.close(box[1])
    if box is not None:
        moved.conflicts_dir = Path(os.fsdecode(box[0]))
    return moved


def remove_stand_in(q: Quarantine, name: str) -> bool:
    """Remove a stand-in home that holds nothing but hometier's notice; True if it is
    gone. A stand-in that holds anything else is left (and reported by the caller)."""
    try:
        fd = open_dir(name, q.fd)
    except FileNotFoundError:
        return True
    try:
        if is_our_notice(fd):
            os.unlink(_NOTICE, dir_fd=fd)
        for leftover in os.listdir(fd):
            name_b = os.fsencode(leftover)
            if name_b.endswith(b".tmp") and name_b.startswith(b"." + _NOTICE):
                st = os.stat(name_b, dir_fd=fd, follow_symlinks=False)
                if st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode):
                    os.unlink(name_b, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=q.fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise


def remove_quarantined(q: Quarantine, name: str) -> None:
    """Delete an archived home from the quarantine (by descriptor, ``remove_tree``)."""
    remove_tree(name, q.fd)


def spare_name(key: str) -> str:
    return f"{key}.left-{secrets.token_hex(4)}"


__all__ = [
    "HomeParentUnsafe",
    "Moved",
    "Quarantine",
    "Swapped",
    "home_attributes",
    "is_our_notice",
    "make_stand_in",
    "merge_leftovers",
    "open_home_parent",
    "remove_quarantined",
    "remove_stand_in",
    "spare_name",
    "swap_into_place",
]
