"""Retention and prune for the lifecycle: which snapshots to keep, then free the rest.

Keeps, per user, the newest ``keep_last`` snapshots, those younger than ``keep_within``
and always the newest complete one (archived homes come back from it); forgets the
others in the repository and the database; then runs the engine's two-phase ``prune``
with the start of the oldest archive in progress taken from the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hometier.engine.prune import PruneReport, forget, prune, select_forget
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.policy import Retention
from hometier.repo.snapshot import Snapshot
from hometier.state import ARCHIVING, queries

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    forgotten: dict[str, list[str]] = field(default_factory=dict)
    prune: PruneReport | None = None


def apply_retention(
    lc: Lifecycle, retention: Retention, *, dry_run: bool = False
) -> RetentionReport:
    report = RetentionReport()
    now = lc.now()
    by_user: dict[str, list[Snapshot]] = {}
    # Every snapshot's document, at every run: the local copies stand in for the GETs
    # (documents never change; ``check`` still reads the bucket's own).
    for snap in lc.repo.list_snapshots(cached=True):
        by_user.setdefault(snap.user, []).append(snap)
    for user, snaps in sorted(by_user.items()):
        _keep, drop = select_forget(
            snaps, now, keep_last=retention.keep_last, keep_within=retention.keep_within
        )
        if not drop:
            continue
        report.forgotten[user] = [s.id for s in drop]
        if not dry_run:
            forget(lc.repo, drop)
            queries.forget_snapshots(lc.db, [s.id for s in drop])
    archiving = queries.list_homes(lc.db, ARCHIVING)
    since = min((h.state_since for h in archiving), default=None)
    report.prune = prune(
        lc.repo,
        now=now,
        grace=retention.grace,
        archives_since=since,
        dry_run=dry_run,
        workers=lc.workers,
        repack_waste=retention.repack_waste,
        repack_max=retention.repack_max,
    )
    return report
