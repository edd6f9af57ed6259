"""Retention and prune for the lifecycle: which snapshots to keep, then free the rest.

Keeps, per user, the newest ``keep_last`` snapshots, those younger than ``keep_within``
and always the newest complete one (archived homes come back from it); forgets the
others in the repository and the database; then runs the engine's two-phase ``prune``
with the start of the oldest archive in progress taken from the database.

A prune reads every snapshot's summary and every index record (O(repository)), but data
becomes unused only when a snapshot goes. So a run that forgets nothing, in a
repository that still holds every snapshot this process's last full prune kept and no
mark waiting to be swept, skips the prune (``RetentionReport.skipped`` says why) for up
to ``FULL_PRUNE_EVERY`` after that prune. What a failed or interrupted archive left
(indexed packs no snapshot reaches) waits for the next full prune: deleting later is
never unsafe. A new process always prunes in full at its first run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from hometier.engine.prune import PruneReport, forget, prune, select_forget
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.policy import Retention
from hometier.repo.repository import PRUNE_PREFIX
from hometier.repo.snapshot import Snapshot
from hometier.state import ARCHIVING, queries

log = logging.getLogger(__name__)


FULL_PRUNE_EVERY = dt.timedelta(days=7)
"""The longest a prune is skipped for (see the module doc)."""


@dataclass
class RetentionReport:
    forgotten: dict[str, list[str]] = field(default_factory=dict)
    prune: PruneReport | None = None
    skipped: str | None = None
    """Why the prune was skipped (None: it ran, or it is a dry run's)."""


@dataclass(frozen=True)
class FullPrune:
    at: dt.datetime
    kept: frozenset[str]
    """The snapshots in the repository when it ran, less those forgotten then."""


def apply_retention(
    lc: Lifecycle, retention: Retention, *, dry_run: bool = False
) -> RetentionReport:
    report = RetentionReport()
    now = lc.now()
    by_user: dict[str, list[Snapshot]] = {}
    # Every snapshot's document, at every run: the local copies stand in for the GETs
    # (documents never change; ``check`` still reads the bucket's own).
    listed: set[str] = set()
    for snap in lc.repo.list_snapshots(cached=True):
        by_user.setdefault(snap.user, []).append(snap)
        listed.add(snap.id)
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
    if not dry_run:
        why = _nothing_to_prune(lc, report, listed, now)
        if why is not None:
            report.skipped = why
            log.info("prune skipped: %s", why)
            return report
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
    if not dry_run:
        gone = {sid for ids in report.forgotten.values() for sid in ids}
        lc.last_full_prune = FullPrune(now, frozenset(listed - gone))
    return report


def _nothing_to_prune(
    lc: Lifecycle, report: RetentionReport, listed: set[str], now: dt.datetime
) -> str | None:
    """Why a prune now could find nothing new, or None if it may (see the module doc)."""
    last = lc.last_full_prune
    if report.forgotten or not isinstance(last, FullPrune):
        return None
    if not now - FULL_PRUNE_EVERY < last.at <= now:
        return None  # too old, or the clock went back
    if not last.kept <= listed:
        return None  # a snapshot went since (another process forgot it)
    if next(iter(lc.repo.store.list(PRUNE_PREFIX)), None) is not None:
        return None  # marks wait to be swept
    return (
        f"no snapshot has gone since the full prune of {last.at:%Y-%m-%d %H:%M} UTC "
        "and no mark is waiting"
    )
