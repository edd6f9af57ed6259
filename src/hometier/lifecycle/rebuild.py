"""Rebuild the state database from the bucket and the homes volume (``hometier repair
state``), after the database was lost and no backup is left.

What the bucket holds is enough to know who has snapshots; what the volume holds tells
which of their homes were archived: a home folder that holds nothing but the archive
notice (``ARCHIVED-BY-HOMETIER.txt``), or nothing at all, while the user has a complete
snapshot. Without this, a new, empty database would register such a home as ``active``,
and its owner's next login would start on an empty home instead of getting the files
back (they would still be in the bucket: nothing is lost, but the login looks so).

For every user with snapshots: the home is registered (as ``active``), every snapshot of
the bucket recorded, and a home whose folder is empty but for the notice is moved to
``archived`` with the newest complete snapshot's time as ``archived_at`` and, when its
quarantine folder (``<homes>/.hometier-quarantine/<user>.<snapshot id:12>``) is still
there, that folder, so that the next login is instant and the purge removes it on time.
Homes that are ``active`` with files, or in any other state, are left as they are.
Idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import InvalidUsername
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state import ACTIVE, ARCHIVED, queries
from hometier.state.queries import SnapshotConflict, SnapshotInfo

log = logging.getLogger(__name__)
ACTOR = "repair-state"


@dataclass
class RebuildReport:
    users: int = 0
    registered: list[str] = field(default_factory=list)
    """Homes the database did not know."""
    snapshots_recorded: int = 0
    archived: list[str] = field(default_factory=list)
    """Homes found archived on the volume (only the notice left) and marked so."""
    with_quarantine: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Users whose name maps to no home folder (``home_template``)."""


def _only_notice(path: str) -> bool:
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return False
    return set(names) <= {NOTICE_NAME}


def _info(snap: Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        id=snap.id,
        time=snap.time,
        files=snap.stats.files,
        bytes=snap.stats.bytes,
        stored_bytes=snap.stats.bytes_new_stored,
        parent=snap.parent,
    )


def rebuild_state(lc: Lifecycle, *, dry_run: bool = False) -> RebuildReport:
    """See the module docstring; ``dry_run`` reports what would change, changes nothing."""
    report = RebuildReport()
    by_user: dict[str, list[Snapshot]] = defaultdict(list)
    for snap in lc.repo.list_snapshots():
        by_user[snap.user].append(snap)
    known = queries.home_users(lc.db)
    now = lc.now()
    for user, snaps in sorted(by_user.items()):
        report.users += 1
        try:
            path = lc.layout.path(user)
        except InvalidUsername:
            report.skipped.append(user)
            continue
        if user not in known:
            report.registered.append(user)
            if not dry_run:
                queries.get_or_create_home(lc.db, user, str(path), now, actor=ACTOR)
        recorded = (
            set() if user not in known else {s.id for s in queries.list_snapshots(lc.db, user)}
        )
        for snap in snaps:
            if snap.id in recorded:
                continue
            report.snapshots_recorded += 1
            if not dry_run:
                try:
                    queries.record_snapshot(lc.db, user, _info(snap), now)
                except SnapshotConflict:
                    log.warning("snapshot %s is recorded for another home", snap.id[:12])
        complete = [s for s in snaps if s.stats.complete]
        state = ACTIVE if user not in known else queries.get_home(lc.db, user).state
        if not complete or state != ACTIVE or not _only_notice(str(path)):
            continue
        latest = max(complete, key=lambda s: s.time_ns)
        quarantine = lc.quarantine_root / f"{local_key(user)}.{latest.id[:12]}"
        held = quarantine.is_dir()
        report.archived.append(user)
        if held:
            report.with_quarantine.append(user)
        if dry_run:
            continue
        queries.transition(
            lc.db,
            user,
            ACTIVE,
            ARCHIVED,
            ACTOR,
            now,
            archived_at=latest.time,
            stored_bytes=sum(s.stats.bytes_new_stored for s in snaps),
            hot_bytes=latest.stats.bytes,
            hot_files=latest.stats.files,
            quarantine_path=str(quarantine) if held else None,
        )
        log.info("repair state: %s marked archived (snapshot %s)", user, latest.id[:12])
    return report
