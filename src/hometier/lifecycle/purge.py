"""Delete quarantined homes that are no longer needed — and only those.

A quarantined home (``<key>.<snapshot:12>``) is deleted under its home's lock once its
home is ``archived`` with the move finished and ``archived_at`` is older than
``quarantine_for`` (or, if no home refers to it any more, once the folder is that old),
and only if, compared again right before, it is still exactly its snapshot and no
process holds anything in it. A process that kept a file open across the move may have
written into it since: such a quarantine is never deleted; it is kept, and an error
event tells the administrators (and the next restore brings those writes back).
Transient folders a crash left behind are cleaned up when that is safe: a restore build
(``.r``/``.rx``, made from the snapshot alone) is deleted, a stand-in (``.fresh``,
``left-<hex>``) only once it holds nothing but the notice, after any entries of the
user's in it were merged back into the home.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import stat
from collections.abc import Iterator

from hometier.engine.fsutil import open_dir
from hometier.engine.restore import STAGING_PREFIX
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree
from hometier.errors import Error
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.install import BUILD, PART
from hometier.lifecycle.inuse import busy_inodes
from hometier.lifecycle.locks import HomeBusy, home_lock
from hometier.lifecycle.moves import (
    Quarantine,
    merge_leftovers,
    open_home_parent,
    remove_quarantined,
    remove_stand_in,
)
from hometier.repo.snapshot import user_from_key
from hometier.state import ACTIVE, ARCHIVED, queries
from hometier.state.models import Home

log = logging.getLogger(__name__)

LOCK_WAIT = 5.0
"""Seconds purge waits for a home's lock; a home being restored is skipped this time."""
DIFF_LIMIT = 20
STALE = dt.timedelta(days=1)
"""A staging folder this old, that no restore holds, was left by a process that died."""
_STAGING = "\0staging"


def purge_quarantine(lc: Lifecycle, errors: list[str] | None = None) -> list[str]:
    """Remove quarantined homes and leftovers that are no longer needed; returns the
    names removed. Problems are logged and listed in ``errors``; the folder concerned
    is kept."""
    root = lc.quarantine_root
    if not root.is_dir():
        return []
    cutoff = lc.now() - lc.quarantine_for
    # Only homes with a quarantine folder: not every home of the hub at every cycle.
    held = queries.list_homes(lc.db, quarantined=True)
    homes = {h.quarantine_path: h for h in held if h.quarantine_path}
    removed: list[str] = []
    with Quarantine(root) as q:
        for name in sorted(os.listdir(q.fd)):
            st = q.exists(name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            if name.startswith(STAGING_PREFIX):
                # A restore's staging folder that a killed process left (the next restore
                # of that snapshot removes it too): removed a day later, under the lock.
                key, rest = name[len(STAGING_PREFIX) :].partition(".")[0], _STAGING
            elif name.startswith("."):
                continue
            else:
                key, _, rest = name.partition(".")
            user = user_from_key(key)
            listed = homes.get(str(root / name))
            if (
                listed is not None
                and listed.archived_at is not None
                and listed.archived_at > cutoff
            ):
                # Archived within quarantine_for by the listing: not due, so neither a lock
                # nor a query for it (a cycle costs O(homes due), not O(homes in
                # quarantine)). Skipping is always safe: the next cycle looks again.
                continue
            try:
                with _locked(lc, user):
                    if q.exists(name) is None:
                        continue  # a restore moved it back meanwhile
                    home = homes.get(str(root / name))
                    if _purge_one(lc, q, name, rest, user, home, cutoff, errors):
                        removed.append(name)
            except HomeBusy:
                continue  # being restored or archived right now: next cycle
            except (Error, OSError) as exc:
                msg = exc.get_message() if isinstance(exc, Error) else str(exc)
                log.error("quarantine %s kept: %s", name, msg)
                if errors is not None:
                    errors.append(f"quarantine {name}: {msg}")
    return removed


@contextlib.contextmanager
def _locked(lc: Lifecycle, user: str | None) -> Iterator[None]:
    if user is None:
        yield
        return
    with home_lock(lc.quarantine_root, user, timeout=LOCK_WAIT):
        yield


def _purge_one(
    lc: Lifecycle,
    q: Quarantine,
    name: str,
    rest: str,
    user: str | None,
    home: Home | None,
    cutoff: dt.datetime,
    errors: list[str] | None,
) -> bool:
    key = name.partition(".")[0]
    if user is not None and q.read_intent(key) is not None:
        return False  # a move in progress: recovery finishes it first
    if rest == _STAGING:
        st = os.stat(name, dir_fd=q.fd, follow_symlinks=False)
        if dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC) > lc.now() - STALE:
            return False
        log.warning("removing the staging folder of a restore that stopped: %s", name)
        remove_quarantined(q, name)
        return True
    if rest.endswith(".fresh") or rest.startswith("left-"):
        return _stand_in(lc, q, name, user)
    if rest.endswith((BUILD, PART)):
        log.warning("removing an unfinished restore build %s", name)
        remove_quarantined(q, name)
        return True
    if home is not None:
        current = queries.get_home(lc.db, home.user)
        if current.quarantine_path != str(q.root / name):
            return False
        if current.state != ARCHIVED or current.archived_at is None:
            return False  # restoring, failed or otherwise in use
        if current.archived_at > cutoff:
            return False
        snap_id = current.archived_snapshot or rest
    else:
        when = dt.datetime.fromtimestamp(os.stat(name, dir_fd=q.fd).st_mtime, tz=dt.UTC)
        if when > cutoff or user is None:
            return False
        snap_id = rest
    differences = _differences(lc, q, name, snap_id, user)
    if differences:
        why = _raise_kept(lc, name, user, differences)
        if errors is not None:
            errors.append(why)
        return False
    log.info("removing quarantined %s", name)
    remove_quarantined(q, name)
    if home is not None:
        _forget_quarantine(lc, home.user, name)
    return True


def _differences(
    lc: Lifecycle, q: Quarantine, name: str, snap_id: str, user: str | None
) -> list[str]:
    """How the quarantined folder differs from its snapshot (or the process using it)."""
    assert user is not None
    try:
        snap = lc.repo.find_snapshot(snap_id, user)
    except Error as exc:
        return [f"its snapshot {snap_id} cannot be read: {exc.get_message()}"]
    trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
    fd = open_dir(name, q.fd)
    try:
        # Top-level ctimes are not compared: a quarantine of hometier 0.1 got its top
        # entries renamed one by one. Everything below is compared in full.
        busy = busy_inodes(os.fstat(fd).st_dev)
        cmp = compare_tree(trees, snap, fd, moved_top=True, busy=busy, limit=DIFF_LIMIT)
    finally:
        os.close(fd)
    return [f"{d.path or '.'}: {d.what}" for d in cmp.differences]


def _raise_kept(lc: Lifecycle, name: str, user: str | None, differences: list[str]) -> str:
    """Tell the administrators: the log every time, an error event and the home's error
    once. Returns the message."""
    why = f"quarantine {name} differs from its snapshot and is kept: {differences[0]}"
    log.error("%s (%d differences)", why, len(differences))
    if user is None:
        return why
    try:
        current = queries.get_home(lc.db, user)
    except queries.HomeNotFound:
        return why
    if current.error == why:
        return why
    queries.transition(
        lc.db,
        user,
        current.state,
        current.state,
        lc.worker,
        lc.now(),
        version=current.version,
        kind="error",
        detail={"reason": "quarantine-differs", "quarantine": name, "details": differences},
        error=why,
    )
    return why


def _forget_quarantine(lc: Lifecycle, user: str, name: str) -> None:
    current = queries.get_home(lc.db, user)
    queries.transition(
        lc.db,
        user,
        current.state,
        current.state,
        lc.worker,
        lc.now(),
        version=current.version,
        detail={"purged": name},
        quarantine_path=None,
    )


def _stand_in(lc: Lifecycle, q: Quarantine, name: str, user: str | None) -> bool:
    """A stand-in a crash left behind: entries the user made in it go back into their
    (active) home first; then it is removed if only the notice is left."""
    if user is not None:
        try:
            home = queries.get_home(lc.db, user)
        except queries.HomeNotFound:
            home = None
        if home is not None and home.state == ACTIVE:
            parent_fd, hname = open_home_parent(lc.layout, user)
            try:
                home_fd = open_dir(hname, parent_fd)
                left_fd = open_dir(name, q.fd)
                try:
                    st = os.fstat(home_fd)
                    merge_leftovers(left_fd, home_fd, "left", (st.st_uid, st.st_gid), newer=True)
                finally:
                    os.close(left_fd)
                    os.close(home_fd)
            finally:
                os.close(parent_fd)
    if remove_stand_in(q, name):
        log.info("removed the stand-in %s", name)
        return True
    log.warning("stand-in %s holds files of its user; kept", name)
    return False


__all__ = ["purge_quarantine"]
