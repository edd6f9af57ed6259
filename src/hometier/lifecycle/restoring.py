"""Bring an archived home back: ``archived → restoring → active``, joined, never clobbering.

One caller performs a restore; concurrent callers (a second login, a lease) join it by
waiting for the state to change. Files that appeared in the home meanwhile are kept: the
snapshot's versions of those names go into a conflicts folder, and the result says so.
A restore whose worker died is taken over: a live restorer holds the home's lock
(``locks.home_lock``) for the whole restore, so ``restoring`` with a free lock, for
longer than a short grace period, means its process is gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hometier.engine import restore
from hometier.engine.fsutil import rename_noreplace
from hometier.engine.restore import RestoreProgress
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree
from hometier.errors import Error
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.locks import home_lock, lock_is_free
from hometier.repo.snapshot import Snapshot
from hometier.state import ACTIVE, ARCHIVED, FAILED, RESTORING, queries

log = logging.getLogger(__name__)

POLL = 0.25
TAKEOVER_GRACE = dt.timedelta(seconds=10)
"""A restore takes its lock right after the database step; allow it that moment."""


class RestoreFailed(Error):
    """Your files could not be restored ({}). They are safe in the archive; please try
    again in a few minutes or contact your hub's administrators. ({})"""

    exit_code = 8
    http_status = 503


class NothingToRestore(Error):
    """No snapshot of {} exists to restore from."""

    exit_code = 3
    http_status = 404


@dataclass
class RestoreResult:
    user: str
    outcome: str
    """``restored`` (this call did it), ``joined`` (another did), ``active`` (nothing
    to do: the files are on the volume)."""
    snapshot: str | None = None
    source: str = ""
    """``bucket`` or ``quarantine``."""
    seconds: float = 0.0
    bytes: int = 0
    files: int = 0
    conflicts: list[str] = field(default_factory=list)
    conflicts_dir: str | None = None


ProgressFn = Callable[[RestoreProgress], None]


def restore_home(
    lc: Lifecycle, user: str, actor: str, *, progress: ProgressFn | None = None
) -> RestoreResult:
    """Make sure ``user``'s files are on the volume; returns once they are.

    Idempotent: an ``active`` home returns at once, a restore already in flight is joined.
    A home never seen by hometier counts as active (there is nothing to restore).
    Raises ``RestoreFailed`` (the home is then ``failed`` and cold; the next request
    tries again) with a message a user can act on.
    """
    started = time.monotonic()
    try:
        queries.get_home(lc.db, user)
    except queries.HomeNotFound:
        return RestoreResult(user, ACTIVE)
    if queries.request_restore(lc.db, user, actor, lc.now()):
        return _perform(lc, user, actor, progress, started)
    while True:
        home = queries.get_home(lc.db, user)
        if home.state != RESTORING:
            break
        if lc.now() - home.state_since > TAKEOVER_GRACE and lock_is_free(lc.quarantine_root, user):
            log.warning("restore of %s was abandoned (its process is gone); taking it over", user)
            try:
                queries.transition(
                    lc.db,
                    user,
                    RESTORING,
                    RESTORING,
                    actor,
                    lc.now(),
                    version=home.version,
                    detail={"took_over": True},
                )
            except queries.StateConflict:
                continue
            return _perform(lc, user, actor, progress, started)
        if time.monotonic() - started > lc.restore_wait.total_seconds():
            raise RestoreFailed(user, "another restore of this home is still running")
        time.sleep(POLL)
    if home.state == FAILED:
        raise RestoreFailed(user, home.error or "the restore failed")
    outcome = "joined" if home.state == ACTIVE else home.state
    return RestoreResult(user, outcome, seconds=time.monotonic() - started)


def _latest(lc: Lifecycle, user: str) -> Snapshot:
    snaps = [s for s in lc.repo.list_snapshots(user) if s.stats.complete]
    if not snaps:
        raise NothingToRestore(user)
    return snaps[-1]


def _perform(
    lc: Lifecycle, user: str, actor: str, progress: ProgressFn | None, started: float
) -> RestoreResult:
    home = queries.get_home(lc.db, user)
    path = Path(home.path)
    result = RestoreResult(user, "restored")
    notice = path / NOTICE_NAME
    try:
        snap = _latest(lc, user)
        result.snapshot = snap.id
        with home_lock(lc.quarantine_root, user, timeout=lc.restore_wait.total_seconds()):
            if notice.exists():
                notice.unlink()
            quarantine = Path(home.quarantine_path) if home.quarantine_path else None
            if (
                lc.restore_from_quarantine
                and quarantine is not None
                and quarantine.is_dir()
                and quarantine.name.endswith("." + snap.id[:12])
                and _from_quarantine(lc, snap, quarantine, path)
            ):
                result.source = "quarantine"
            else:
                merge = path.exists() and not _empty(path)
                stats = restore(
                    lc.repo, snap, path, workers=lc.workers, progress=progress, merge=merge
                )
                result.source = "bucket"
                result.conflicts, result.conflicts_dir = stats.conflicts, stats.conflicts_dir
        result.bytes, result.files = snap.stats.bytes, snap.stats.files
        detail_fields = {"hot_bytes": snap.stats.bytes, "hot_files": snap.stats.files}
        queries.finish_restore(lc.db, user, actor, lc.now(), **detail_fields)
    except Error as exc:
        msg = exc.get_message()
        log.error("restoring %s failed: %s", user, msg)
        _put_notice_back(notice)
        queries.fail(lc.db, user, msg, actor, lc.now(), from_states=RESTORING)
        raise RestoreFailed(user, msg) from exc
    result.seconds = time.monotonic() - started
    if result.conflicts:
        log.warning(
            "restored %s with conflicts kept in %s: %s",
            user,
            result.conflicts_dir,
            result.conflicts,
        )
    log.info("restored %s from the %s in %.1fs", user, result.source, result.seconds)
    return result


def _empty(path: Path) -> bool:
    return not path.exists() or not any(p for p in os.listdir(path) if p != NOTICE_NAME)


def _from_quarantine(lc: Lifecycle, snap: Snapshot, quarantine: Path, path: Path) -> bool:
    """Move the quarantined files back (never over a file in the home) and check that
    the home now equals the snapshot. False: the bucket restore fills what is missing
    (in merge mode, so nothing that is there is overwritten)."""
    path.mkdir(parents=True, exist_ok=True)
    q, home = os.fsencode(quarantine), os.fsencode(path)
    for name in os.listdir(q):
        try:
            rename_noreplace(q + b"/" + name, home + b"/" + name)
        except FileExistsError:
            log.warning("%s: kept %s in the quarantine, the home has one", path, os.fsdecode(name))
    try:
        os.rmdir(q)
    except OSError:
        pass
    try:
        trees = TreeCache(lc.repo, [snap.tree], workers=lc.workers)
        cmp = compare_tree(trees, snap, path, moved_top=True)
    except Error as exc:
        log.warning("%s: could not compare with the snapshot: %s", path, exc)
        return False
    if not cmp.same:
        log.warning(
            "%s differs from its snapshot after leaving the quarantine: %s",
            path,
            [f"{d.path}: {d.what}" for d in cmp.differences],
        )
    return cmp.same


def _put_notice_back(notice: Path) -> None:
    try:
        if notice.parent.is_dir() and _empty(notice.parent) and not notice.exists():
            notice.write_text("Your files are archived; they come back at your next login.\n")
    except OSError:
        pass


__all__ = ["ARCHIVED", "NothingToRestore", "RestoreFailed", "RestoreResult", "restore_home"]
