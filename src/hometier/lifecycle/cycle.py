"""Archive one home with every safety check of DESIGN.md.

The order is the invariant: snapshot → verify → under the home's lock, compare with the
disk and with the processes using it → the one atomic database step ``archiving →
archived`` (refused if a login or lease arrived) → swap the home folder with a stand-in
holding the notice (``aside``) → compare again, ctime included → put it back if
anything differs. A crash at any point leaves the home on disk (before the database
step) or its files in the quarantine with a verified snapshot (after it); ``recovery``
finishes or undoes the move on the next run, and ``purge`` deletes a quarantined home
only once it is old enough, unused and still exactly its snapshot.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hometier import faults
from hometier.engine import backup
from hometier.engine.archive import MOUNTED
from hometier.engine.usedcache import summary_cache
from hometier.engine.verify import compare_tree, verify_snapshot
from hometier.errors import Error, NotFound
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.aside import NotEligible, back_to_active, move_aside
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.inuse import busy_inodes, mounts_under
from hometier.lifecycle.locks import home_lock
from hometier.lifecycle.purge import purge_quarantine
from hometier.lifecycle.recovery import recover
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state import ACTIVE, queries
from hometier.state.queries import SnapshotInfo

log = logging.getLogger(__name__)


class NoSuchHome(NotFound):
    """No home folder for {} at {}."""


@dataclass
class ArchiveResult:
    user: str
    outcome: str
    """``archived``; kept on the volume: ``changed`` (it changed while archiving),
    ``in-use`` (a process holds a file or folder in it), ``cancelled`` (a login or lease
    arrived), ``skipped`` (not eligible: a mount inside, not a folder); or ``failed``."""
    snapshot: str | None = None
    reason: str = ""
    bytes: int = 0
    stored_bytes: int = 0
    details: list[str] = field(default_factory=list)


def archive_home(lc: Lifecycle, user: str) -> ArchiveResult:
    """Run the whole archive cycle for ``user`` now, whatever the idle policy says.

    Refuses (``NotEligible``) a home that is not ``active``, is exempt or has a lease.
    Never deletes anything unless every check passed; see the module docstring.
    """
    path = lc.layout.path(user)
    now = lc.now()
    if lc.use_hub and lc.hub is None:
        raise NotEligible(
            user,
            "no JupyterHub API is configured, so nobody can tell whether a server is "
            "running (set c.Archiver.hub_api_url, or c.Archiver.use_hub = False on a "
            "deployment without JupyterHub)",
        )
    try:
        queries.get_home(lc.db, user)
    except queries.HomeNotFound:
        if not path.is_dir() or path.is_symlink():
            raise NoSuchHome(user, path) from None
    queries.get_or_create_home(lc.db, user, str(path), now, actor=lc.worker)
    claimed = queries.begin_archive_claim(
        lc.db, lc.worker, now, limit=1, candidates=[user], claim_for=lc.claim_for
    )
    if not claimed:
        home = queries.get_home(lc.db, user)
        leases = queries.active_leases(lc.db, user, now)
        why = (
            f"it is {home.state}"
            if home.state != ACTIVE
            else "it is exempt"
            if home.exempt
            else f"it has {len(leases)} active lease(s)"
            if leases
            else "another worker holds it"
        )
        raise NotEligible(user, why)
    return archive_claimed(lc, user, claimed[0].version, path)


def archive_claimed(lc: Lifecycle, user: str, version: int, path: Path) -> ArchiveResult:
    """The archive cycle for a home this worker has claimed at ``version``."""
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(lc, user, version, stop), name="claim", daemon=True
    )
    beat.start()
    started = time.monotonic()
    result = ArchiveResult(user, "failed")
    try:
        result = _archive(lc, user, version, path)
        return result
    finally:
        stop.set()
        beat.join()
        if lc.on_archive is not None:
            lc.on_archive(result, time.monotonic() - started)


def _heartbeat(lc: Lifecycle, user: str, version: int, stop: threading.Event) -> None:
    """Renew the claim while the archive runs, so only a dead worker's claim expires."""
    period = lc.claim_for.total_seconds() / 4
    while not stop.wait(period):
        try:
            if not queries.renew_claim(lc.db, user, lc.worker, version, lc.now(), lc.claim_for):
                return  # the claim is gone (a login cancelled it): the DB step will refuse
        except Exception:  # noqa: BLE001 - a missed beat only shortens the claim
            log.warning("could not renew the claim on %s", user, exc_info=True)


def _archive(lc: Lifecycle, user: str, version: int, path: Path) -> ArchiveResult:
    result = ArchiveResult(user, "failed")
    try:
        home_st = _check_home(lc, user, path)
        if _only_notice(path):
            back_to_active(lc, user, version, "home is empty", [])
            result.outcome, result.reason = "cancelled", "the home is empty"
            return result
        parent = _latest_snapshot(lc, user)
        snap = backup(
            lc.repo,
            path,
            user=user,
            parent=parent,
            workers=lc.workers,
            pack_size=lc.pack_size,
        )
        faults.point("after_snapshot")
        result.snapshot, result.bytes = snap.id, snap.stats.bytes
        result.stored_bytes = snap.stats.bytes_new_stored
        queries.record_snapshot(lc.db, user, _info(snap), lc.now())
        mounted = [m for m in snap.stats.skipped if m.endswith(MOUNTED)]
        if mounted:
            back_to_active(lc, user, version, "a filesystem is mounted inside", mounted)
            result.outcome, result.reason, result.details = "skipped", "mount inside", mounted
            return result
        if not snap.stats.complete or snap.stats.changed:
            details = snap.stats.errors + snap.stats.changed
            back_to_active(lc, user, version, "changed or unreadable during snapshot", details)
            result.outcome, result.reason, result.details = (
                "changed",
                "changed during snapshot",
                details,
            )
            return result
        trees = verify_snapshot(
            lc.repo,
            snap,
            read_data=lc.read_back,
            workers=lc.workers,
            summaries=summary_cache(lc.repo),
        )
        if lc.hub is not None and _hub_running(lc, user):
            back_to_active(lc, user, version, "a server started", [])
            result.outcome, result.reason = "cancelled", "a server is running"
            return result
        qname = f"{local_key(user)}.{snap.id[:12]}"
        quarantine = lc.quarantine_root / qname
        # The lock is taken before the last comparison and the database step, so that a
        # login arriving right after it waits for the move to finish instead of racing it.
        with home_lock(lc.quarantine_root, user):
            # Last look before the point of no return: every file as the snapshot has it
            # (ctime included), and no process holding one open or working inside.
            cmp = compare_tree(trees, snap, path, busy=busy_inodes(home_st.st_dev))
            if not cmp.same:
                details = [f"{d.path}: {d.what}" for d in cmp.differences]
                in_use = any(d.what.startswith("in use") for d in cmp.differences)
                why = "in use" if in_use else "changed after snapshot"
                back_to_active(lc, user, version, why, details)
                result.outcome, result.reason, result.details = (
                    "in-use" if in_use else "changed",
                    why,
                    details,
                )
                return result
            if not queries.finish_archive(
                lc.db,
                user,
                lc.worker,
                version,
                lc.now(),
                _info(snap),
                quarantine_path=str(quarantine),
            ):
                result.outcome, result.reason = "cancelled", "a login or lease arrived"
                return result
            faults.point("after_state_change")
            if not move_aside(lc, user, qname, snap, home_st.st_ino, trees):
                result.outcome, result.reason = "changed", "changed while moved aside; kept"
                return result
        result.outcome = "archived"
        log.info("archived %s: snapshot %s, %d bytes", user, snap.id[:12], snap.stats.bytes)
        return result
    except BaseException as exc:
        if isinstance(exc, faults.FaultInjected | KeyboardInterrupt):
            raise
        msg = exc.get_message() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NotEligible):
            log.warning("not archiving %s: %s", user, msg)
            back_to_active(lc, user, version, "not eligible", [msg])
            result.outcome, result.reason = "skipped", msg
            return result
        log.error("archiving %s failed: %s", user, msg)
        back_to_active(lc, user, version, "archive failed", [msg])
        result.reason = msg
        if not isinstance(exc, Error):
            raise
        return result


def _check_home(lc: Lifecycle, user: str, path: Path) -> os.stat_result:
    """The home as it is before anything is read: a real folder on the homes root's
    filesystem, with no other filesystem mounted anywhere inside (``NotEligible``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotEligible(user, f"{path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotEligible(user, f"{path} is not a folder")
    if st.st_dev != os.stat(lc.layout.root).st_dev:
        # Moving aside is a rename into the quarantine on the homes root's filesystem.
        raise NotEligible(user, f"{path} is a filesystem of its own (a mount)")
    mounts = mounts_under(path)
    if mounts:
        raise NotEligible(user, f"a filesystem is mounted at {mounts[0]}")
    return st


def _only_notice(path: Path) -> bool:
    return set(os.listdir(path)) <= {NOTICE_NAME, f".{NOTICE_NAME}.tmp"}


def _hub_running(lc: Lifecycle, user: str) -> bool:
    """Ask the Hub about this one user right before the database step."""
    assert lc.hub is not None
    found = lc.hub.user(user)
    return found is not None and found.running


def _latest_snapshot(lc: Lifecycle, user: str) -> Snapshot | None:
    # The parent only tells which files may be reused unread (their blobs are checked
    # present anyway): the local copies of the user's documents serve, one LIST instead
    # of a GET per snapshot the user ever had.
    snaps = lc.repo.list_snapshots(user, cached=True)
    complete = [s for s in snaps if s.stats.complete]
    return complete[-1] if complete else None


def _info(snap: Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        id=snap.id,
        time=snap.time,
        files=snap.stats.files,
        bytes=snap.stats.bytes,
        stored_bytes=snap.stats.bytes_new_stored,
        tree=None,
        parent=snap.parent,
    )


__all__ = [
    "ArchiveResult",
    "NoSuchHome",
    "NotEligible",
    "archive_claimed",
    "archive_home",
    "purge_quarantine",
    "recover",
]
