"""Finish or undo what a crash interrupted: moves aside, and claims of dead workers.

A move aside is recorded as an intent in the quarantine before the first rename
(``aside.move_aside``); the inodes it names tell how far it got (the home still in
place, swapped, or moved into the quarantine), so the move is finished, or done again,
from there. A quarantine of hometier 0.1 (entries moved one by one, the notice last)
interrupted mid-way is finished the old way, by descriptor.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

from hometier.engine.fsutil import open_dir, rename_noreplace, write_new_file
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree
from hometier.errors import Error
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.aside import NOTICE, NotEligible, back_to_active, finish_move, move_aside
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.inuse import busy_inodes, is_zombie_or_gone
from hometier.lifecycle.locks import home_lock
from hometier.lifecycle.moves import (
    Quarantine,
    is_our_notice,
    merge_leftovers,
    open_home_parent,
    remove_stand_in,
)
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state import ACTIVE, ARCHIVED, ARCHIVING, RESTORING, queries

log = logging.getLogger(__name__)


def recover(lc: Lifecycle, errors: list[str] | None = None) -> list[str]:
    """Finish or undo moves interrupted by a crash; returns the homes it touched.

    An ``archived`` home with a move recorded as in progress (an intent in the
    quarantine), or whose quarantine folder is missing while its home folder still holds
    its files, was being moved aside when the process died: the move is finished (and
    checked) now. A home that cannot be recovered is left exactly as it is and reported
    in ``errors``; the others are not held up by it.
    """
    done: list[str] = []
    if lc.quarantine_root.is_dir():
        with Quarantine(lc.quarantine_root) as q:
            # Only homes still in the quarantine: a purged one has no move to finish.
            for home in queries.list_homes(lc.db, ARCHIVED, quarantined=True):
                if not home.quarantine_path:
                    continue
                qname = Path(home.quarantine_path).name
                if q.read_intent(local_key(home.user)) is None:
                    if q.exists(qname) is not None:
                        if not _legacy_half_move(q, qname, Path(home.path)):
                            continue  # moved aside, nothing pending
                    elif _holds_our_notice(Path(home.path)):
                        continue  # the stand-in is in place (the quarantine was purged)
                try:
                    if recover_archive(lc, home.user):
                        done.append(home.user)
                except (Error, OSError) as exc:
                    msg = exc.get_message() if isinstance(exc, Error) else str(exc)
                    log.error(
                        "could not recover the archive of %s; left as it is: %s", home.user, msg
                    )
                    if errors is not None:
                        errors.append(f"{home.user}: recovery: {msg}")
    now = lc.now()
    for home in queries.list_homes(lc.db, ARCHIVING):
        expired = home.claimed_until is not None and home.claimed_until < now
        if expired or _dead_here(home.claimed_by):
            # Its worker died before the database step: the home was never touched.
            back_to_active(lc, home.user, home.version, "worker gone; archive abandoned", [])
            done.append(home.user)
    return done


def recover_archive(lc: Lifecycle, user: str) -> bool:
    """Finish, under the home's lock, a move aside that a crash interrupted (see
    ``recover``). True if it did anything."""
    with home_lock(lc.quarantine_root, user):
        return recover_archive_locked(lc, user)


def recover_archive_locked(lc: Lifecycle, user: str, *, restoring: bool = False) -> bool:
    """``recover_archive`` for a caller that holds the home's lock. ``restoring``: the
    caller is a restore of this home, which only needs the folders where the move left
    them in a known place (the home in place, or in the quarantine); it brings the home
    back itself, so nothing is compared or moved aside again."""
    home = queries.get_home(lc.db, user)
    wanted = RESTORING if restoring else ARCHIVED
    if home.state != wanted or not home.quarantine_path:
        return False  # a login got there first
    qname = Path(home.quarantine_path).name
    snap = lc.repo.find_snapshot(home.archived_snapshot or qname.rsplit(".", 1)[-1], user)
    key = local_key(user)
    with Quarantine(lc.quarantine_root) as q:
        pending = q.read_intent(key)
        parent_fd, name = open_home_parent(lc.layout, user)
        try:
            if restoring:
                return _settle_for_restore(q, key, pending, qname, parent_fd, name)
            if pending is None:
                if q.exists(qname) is not None:
                    if not _legacy_half_move(q, qname, Path(home.path)):
                        return False
                    log.warning("finishing the interrupted archive of %s (0.1 layout)", user)
                    return _finish_legacy_move(lc, user, q, parent_fd, name, qname, snap)
                # Stopped between the database step and the first move: the home must
                # still be exactly the snapshot, or it is left for an administrator.
                home_fd = open_dir(name, parent_fd)
                try:
                    trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
                    cmp = compare_tree(trees, snap, home_fd)
                    ino = os.fstat(home_fd).st_ino
                finally:
                    os.close(home_fd)
                if not cmp.same:
                    raise NotEligible(
                        user,
                        "its quarantine folder is missing and the home is not the "
                        f"snapshot ({cmp.differences[0].path}: {cmp.differences[0].what})",
                    )
                log.warning("moving the home of %s aside (the archive stopped before)", user)
                move_aside(lc, user, qname, snap, ino, trees)
                return True
            log.warning("finishing the interrupted archive of %s", user)
            home_ino, fresh = pending["home_ino"], pending["fresh"]
            at_home = _ino(name, parent_fd)
            if at_home == home_ino:
                # Never swapped: throw the stand-in away and do the whole move again.
                if q.exists(fresh) is not None and not remove_stand_in(q, fresh):
                    raise NotEligible(user, f"{fresh} in the quarantine is not empty")
                q.clear_intent(key)
                move_aside(lc, user, qname, snap, home_ino, None)
                return True
            if _ino(fresh, q.fd) == home_ino:
                rename_noreplace(fresh, qname, src_dir_fd=q.fd, dst_dir_fd=q.fd)
            elif at_home is None and _ino(fresh, q.fd) == pending["fresh_ino"]:
                rename_noreplace(fresh, name, src_dir_fd=q.fd, dst_dir_fd=parent_fd)
            finish_move(lc, user, q, parent_fd, name, qname, snap, home_ino)
            return True
        finally:
            os.close(parent_fd)


def _settle_for_restore(
    q: Quarantine,
    key: str,
    pending: dict[str, object] | None,
    qname: str,
    parent_fd: int,
    name: str,
) -> bool:
    """Leave an interrupted move with the home either in place or in the quarantine."""
    if pending is None:
        return False
    fresh = str(pending["fresh"])
    at_home = _ino(name, parent_fd)
    if at_home == pending["home_ino"]:
        if q.exists(fresh) is not None and not remove_stand_in(q, fresh):
            log.error("stand-in %s holds files; kept", fresh)
    elif _ino(fresh, q.fd) == pending["home_ino"]:
        rename_noreplace(fresh, qname, src_dir_fd=q.fd, dst_dir_fd=q.fd)
    elif at_home is None and _ino(fresh, q.fd) == pending["fresh_ino"]:
        rename_noreplace(fresh, name, src_dir_fd=q.fd, dst_dir_fd=parent_fd)
    q.clear_intent(key)
    return True


def _ino(name: str, dir_fd: int) -> int | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def _legacy_half_move(q: Quarantine, qname: str, path: Path) -> bool:
    """A move aside of hometier 0.1 interrupted: it moved entries one by one into a
    root-owned 0700 quarantine folder and wrote the notice last, so the home still holds
    entries and no notice of ours. (Today's quarantine folder is the home folder itself,
    owned by its user.)"""
    st = q.exists(qname)
    if st is None or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        return False
    try:
        fd = open_dir(os.fsencode(path))
    except OSError:
        return False
    try:
        names = set(os.listdir(fd))
        return bool(names - {NOTICE_NAME}) and not is_our_notice(fd)
    finally:
        os.close(fd)


def _holds_our_notice(path: Path) -> bool:
    try:
        fd = open_dir(os.fsencode(path))
    except OSError:
        return False
    try:
        return is_our_notice(fd)
    finally:
        os.close(fd)


def _finish_legacy_move(
    lc: Lifecycle, user: str, q: Quarantine, parent_fd: int, name: str, qname: str, snap: Snapshot
) -> bool:
    """Move the rest of the entries into the 0.1-style quarantine folder, by descriptor,
    then compare (top-level ctimes changed with the renames) and leave the notice; put
    everything back if anything differs."""
    home_fd = open_dir(name, parent_fd)
    qfd = open_dir(qname, q.fd)
    try:
        st = os.fstat(home_fd)
        merge_leftovers(home_fd, qfd, snap.id[:12], (st.st_uid, st.st_gid), newer=False)
        trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
        cmp = compare_tree(trees, snap, qfd, moved_top=True, busy=busy_inodes(st.st_dev))
        if cmp.same:
            notice = NOTICE.format(date=snap.time.date().isoformat(), snapshot=snap.id[:12])
            write_new_file(home_fd, NOTICE_NAME, notice.encode(), 0o444)
            return True
        merge_leftovers(qfd, home_fd, snap.id[:12], (st.st_uid, st.st_gid), newer=False)
    finally:
        os.close(qfd)
        os.close(home_fd)
    home = queries.get_home(lc.db, user)
    queries.transition(
        lc.db,
        user,
        ARCHIVED,
        ACTIVE,
        lc.worker,
        lc.now(),
        version=home.version,
        detail={"reason": "changed while moved aside; kept"},
        quarantine_path=None,
        archived_at=None,
        archived_snapshot=None,
    )
    return True


def _dead_here(worker: str | None) -> bool:
    """True if ``worker`` (``kind:host:pid``) ran on this host and its process is gone
    (or is a zombie): a restarted archiver need not wait for its dead predecessor's
    claim to expire."""
    if not worker or worker.count(":") < 2:
        return False
    _kind, host, pid = worker.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return is_zombie_or_gone(int(pid))
