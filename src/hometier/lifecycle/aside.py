"""Move an archived home aside, check it once more, and put it back if it changed.

The home folder is swapped, as one folder, with a stand-in prepared in the private
quarantine (``moves``): the stand-in already holds the notice and the home's owner,
mode and attributes, so nothing is written into a folder the user controls, and every
file keeps its inode and ctime. The moved folder is then compared with the snapshot
with ctime everywhere (only the folder itself was renamed) and with the processes that
hold files in it. The move is recorded as an intent so ``recovery`` can finish it.
"""

from __future__ import annotations

import logging
import os

from hometier import faults
from hometier.engine.fsutil import open_dir
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree
from hometier.errors import Conflict
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.inuse import busy_inodes
from hometier.lifecycle.moves import (
    Quarantine,
    home_attributes,
    make_stand_in,
    merge_leftovers,
    open_home_parent,
    remove_stand_in,
    spare_name,
    swap_into_place,
)
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state import ACTIVE, ARCHIVED, ARCHIVING, queries

log = logging.getLogger(__name__)


class NotEligible(Conflict):
    """Home of {} cannot be archived now: {}."""


NOTICE = """\
Your files were archived by hometier on {date} because this home was not used for a
while. They come back automatically, exactly as they were, the next time you log in to
JupyterHub. Nothing was lost. (Snapshot {snapshot}.)
"""


def back_to_active(lc: Lifecycle, user: str, version: int, why: str, details: list[str]) -> None:
    try:
        queries.transition(
            lc.db,
            user,
            ARCHIVING,
            ACTIVE,
            lc.worker,
            lc.now(),
            version=version,
            detail={"reason": why, "details": details[:10]},
        )
    except queries.StateConflict:
        pass  # a login already made it active (or another worker took over): fine


def move_aside(
    lc: Lifecycle,
    user: str,
    qname: str,
    snap: Snapshot,
    home_ino: int,
    trees: TreeCache | None,
) -> bool:
    """Swap the home folder with a stand-in holding only the notice, then compare the
    moved folder with the snapshot once more (ctime included: nothing was renamed inside
    it). Returns False when something had changed and the home was put back (it is then
    ``active`` again). Recorded as an intent so that ``recover`` can finish it."""
    key = local_key(user)
    fresh = qname + ".fresh"
    notice = NOTICE.format(date=snap.time.date().isoformat(), snapshot=snap.id[:12])
    with Quarantine(lc.quarantine_root) as q:
        parent_fd, name = open_home_parent(lc.layout, user)
        try:
            home_fd = open_dir(name, parent_fd)
            try:
                if os.fstat(home_fd).st_ino != home_ino:
                    raise NotEligible(user, "the home folder was replaced during the archive")
                attrs = home_attributes(home_fd)
            finally:
                os.close(home_fd)
            if q.exists(fresh) and not remove_stand_in(q, fresh):
                raise NotEligible(user, f"{fresh} in the quarantine is not empty")
            fresh_ino = make_stand_in(q, fresh, attrs, notice)
            q.write_intent(
                key,
                {
                    "op": "archive",
                    "user": user,
                    "snapshot": snap.id,
                    "home_ino": home_ino,
                    "fresh_ino": fresh_ino,
                    "quarantine": qname,
                    "fresh": fresh,
                },
            )
            faults.point("mid_delete")
            swap_into_place(q, fresh, parent_fd, name, qname)
            faults.point("after_swap")
            return finish_move(lc, user, q, parent_fd, name, qname, snap, home_ino, trees)
        finally:
            os.close(parent_fd)


def finish_move(
    lc: Lifecycle,
    user: str,
    q: Quarantine,
    parent_fd: int,
    name: str,
    qname: str,
    snap: Snapshot,
    home_ino: int,
    trees: TreeCache | None = None,
) -> bool:
    key = local_key(user)
    st = q.exists(qname)
    if st is None or st.st_ino != home_ino:
        raise NotEligible(user, "the moved home is not the folder that was archived")
    if trees is None:
        trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
    qfd = open_dir(qname, q.fd)
    try:
        cmp = compare_tree(trees, snap, qfd, busy=busy_inodes(st.st_dev))
    finally:
        os.close(qfd)
    if cmp.same:
        q.clear_intent(key)
        return True
    details = [f"{d.path}: {d.what}" for d in cmp.differences]
    log.warning("home of %s changed while it was moved aside; putting it back: %s", user, details)
    spare = spare_name(key)
    swap_into_place(q, qname, parent_fd, name, spare)
    merge_back(q, parent_fd, name, spare, snap)
    q.clear_intent(key)
    home = queries.get_home(lc.db, user)
    queries.transition(
        lc.db,
        user,
        ARCHIVED,
        ACTIVE,
        lc.worker,
        lc.now(),
        version=home.version,
        detail={"reason": "changed while moved aside; kept", "details": details[:10]},
        quarantine_path=None,
        archived_at=None,
        archived_snapshot=None,
    )
    return False


def merge_back(q: Quarantine, parent_fd: int, name: str, spare: str, snap: Snapshot) -> None:
    """After the real home is back in place: what the user made in the stand-in
    meanwhile joins it (newer entries keep their names), then the stand-in goes."""
    if q.exists(spare) is None:
        return
    home_fd = open_dir(name, parent_fd)
    try:
        left_fd = open_dir(spare, q.fd)
        try:
            st = os.fstat(home_fd)
            merge_leftovers(left_fd, home_fd, snap.id[:12], (st.st_uid, st.st_gid), newer=True)
        finally:
            os.close(left_fd)
    finally:
        os.close(home_fd)
    if not remove_stand_in(q, spare):
        log.error("could not empty %s in the quarantine; left there", spare)
