"""Archive one home with every safety check of DESIGN.md, and recover from crashes.

The order is the invariant: snapshot → verify → compare with the disk → the one atomic
database step ``archiving → archived`` (refused if a login or lease arrived) → move the
contents aside into the quarantine (same filesystem) → compare again → notice file.
A crash at any point leaves the home on disk (before the database step) or its files in
the quarantine with a verified snapshot (after it); ``recover`` finishes or undoes the
move on the next run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hometier import faults
from hometier.engine import backup
from hometier.engine.fsutil import remove_path, rename_noreplace
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree, verify_snapshot
from hometier.errors import Conflict, Error, NotFound
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.locks import home_lock
from hometier.lifecycle.moves import move_entries
from hometier.repo.snapshot import Snapshot, local_key, user_from_key
from hometier.state import ACTIVE, ARCHIVED, ARCHIVING, queries
from hometier.state.queries import SnapshotInfo

log = logging.getLogger(__name__)

NOTICE = """\
Your files were archived by hometier on {date} because this home was not used for a
while. They come back automatically, exactly as they were, the next time you log in to
JupyterHub. Nothing was lost. (Snapshot {snapshot}.)
"""


class NoSuchHome(NotFound):
    """No home folder for {} at {}."""


class NotEligible(Conflict):
    """Home of {} cannot be archived now: {}."""


@dataclass
class ArchiveResult:
    user: str
    outcome: str
    """``archived``, ``changed`` (kept: it changed while archiving), ``cancelled`` (a
    login or lease arrived), or ``failed``."""
    snapshot: str | None = None
    reason: str = ""
    bytes: int = 0
    stored_bytes: int = 0
    details: list[str] = field(default_factory=list)


def _back_to_active(lc: Lifecycle, user: str, version: int, why: str, details: list[str]) -> None:
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


def archive_home(lc: Lifecycle, user: str) -> ArchiveResult:
    """Run the whole archive cycle for ``user`` now, whatever the idle policy says.

    Refuses (``NotEligible``) a home that is not ``active``, is exempt or has a lease.
    Never deletes anything unless every check passed; see the module docstring.
    """
    path = lc.layout.path(user)
    now = lc.now()
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
        if not path.is_dir() or path.is_symlink():
            raise NotEligible(user, f"{path} is not a folder")
        if path.stat().st_dev != lc.layout.root.stat().st_dev:
            # Moving aside is a rename into the quarantine on the homes root's filesystem.
            raise NotEligible(user, f"{path} is a filesystem of its own (a mount)")
        if _only_notice(path):
            _back_to_active(lc, user, version, "home is empty", [])
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
        if not snap.stats.complete or snap.stats.changed:
            details = snap.stats.errors + snap.stats.changed
            _back_to_active(lc, user, version, "changed or unreadable during snapshot", details)
            result.outcome, result.reason, result.details = (
                "changed",
                "changed during snapshot",
                details,
            )
            return result
        trees = verify_snapshot(lc.repo, snap, read_data=lc.read_back, workers=lc.workers)
        cmp = compare_tree(trees, snap, path)
        if not cmp.same:
            details = [f"{d.path}: {d.what}" for d in cmp.differences]
            _back_to_active(lc, user, version, "changed after snapshot", details)
            result.outcome, result.reason, result.details = (
                "changed",
                "changed after snapshot",
                details,
            )
            return result
        if lc.hub is not None and _hub_running(lc, user):
            _back_to_active(lc, user, version, "a server started", [])
            result.outcome, result.reason = "cancelled", "a server is running"
            return result
        quarantine = lc.quarantine_root / f"{local_key(user)}.{snap.id[:12]}"
        # The lock is taken before the database step so that a login arriving right
        # after it waits for the move to finish instead of racing it.
        with home_lock(lc.quarantine_root, user):
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
            if not _move_to_quarantine(lc, user, path, quarantine, snap):
                result.outcome, result.reason = "changed", "changed while moved aside; kept"
                return result
        result.outcome = "archived"
        log.info("archived %s: snapshot %s, %d bytes", user, snap.id[:12], snap.stats.bytes)
        return result
    except BaseException as exc:
        if isinstance(exc, faults.FaultInjected | KeyboardInterrupt):
            raise
        msg = exc.get_message() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
        log.error("archiving %s failed: %s", user, msg)
        _back_to_active(lc, user, version, "archive failed", [msg])
        result.reason = msg
        if not isinstance(exc, Error):
            raise
        return result


def _move_to_quarantine(
    lc: Lifecycle, user: str, path: Path, quarantine: Path, snap: Snapshot
) -> bool:
    """Move every entry of the home into the quarantine, then prove nothing changed.

    Returns False when something had changed and everything was put back (the home is
    then ``active`` again)."""
    lc.quarantine_root.mkdir(mode=0o700, exist_ok=True)
    quarantine.mkdir(mode=0o700, exist_ok=True)
    home = os.fsencode(path)
    q = os.fsencode(quarantine)
    for i, name in enumerate(sorted(os.listdir(home))):
        if name == NOTICE_NAME.encode():
            continue
        rename_noreplace(home + b"/" + name, q + b"/" + name)
        if i == 0:
            faults.point("mid_delete")
    return _finish_move(lc, user, path, quarantine, snap)


def _finish_move(lc: Lifecycle, user: str, path: Path, quarantine: Path, snap: Snapshot) -> bool:
    trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
    cmp = compare_tree(trees, snap, quarantine, moved_top=True)
    if not cmp.same:
        details = [f"{d.path}: {d.what}" for d in cmp.differences]
        log.warning(
            "home of %s changed while it was moved aside; putting it back: %s", user, details
        )
        move_entries(quarantine, path, snap.id[:12])
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
        )
        return False
    notice = path / NOTICE_NAME
    tmp = path / f".{NOTICE_NAME}.tmp"
    try:
        tmp.write_text(NOTICE.format(date=snap.time.date().isoformat(), snapshot=snap.id[:12]))
        os.chmod(tmp, 0o444)
        os.replace(tmp, notice)
    except OSError as exc:
        # The notice only informs: a full volume must not undo a finished archive.
        log.warning("archived %s but could not leave the notice file: %s", user, exc.strerror)
        tmp.unlink(missing_ok=True)
    return True


def _only_notice(path: Path) -> bool:
    return set(os.listdir(path)) <= {NOTICE_NAME, f".{NOTICE_NAME}.tmp"}


def _hub_running(lc: Lifecycle, user: str) -> bool:
    """Ask the Hub about this one user right before the database step."""
    assert lc.hub is not None
    found = lc.hub.user(user)
    return found is not None and found.running


def _latest_snapshot(lc: Lifecycle, user: str) -> Snapshot | None:
    snaps = lc.repo.list_snapshots(user)
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


# --- recovery and housekeeping ---------------------------------------------------------------


def recover(lc: Lifecycle, errors: list[str] | None = None) -> list[str]:
    """Finish or undo moves interrupted by a crash; returns the homes it touched.

    An ``archived`` home whose folder still holds files besides the notice was being
    moved aside when the process died: the move is finished (and checked) now. A home
    that cannot be recovered is left exactly as it is and reported in ``errors``; the
    others are not held up by it.
    """
    done: list[str] = []
    for home in queries.list_homes(lc.db, ARCHIVED):
        if not home.quarantine_path:
            continue
        path = Path(home.path)
        if not path.is_dir() or _only_notice(path) and (path / NOTICE_NAME).exists():
            continue
        try:
            if _recover_move(lc, home.user, path, Path(home.quarantine_path)):
                done.append(home.user)
        except (Error, OSError) as exc:
            msg = exc.get_message() if isinstance(exc, Error) else str(exc)
            log.error("could not recover the archive of %s; left as it is: %s", home.user, msg)
            if errors is not None:
                errors.append(f"{home.user}: recovery: {msg}")
    now = lc.now()
    for home in queries.list_homes(lc.db, ARCHIVING):
        expired = home.claimed_until is not None and home.claimed_until < now
        if expired or _dead_here(home.claimed_by):
            # Its worker died before the database step: the home was never touched.
            _back_to_active(lc, home.user, home.version, "worker gone; archive abandoned", [])
            done.append(home.user)
    return done


def _recover_move(lc: Lifecycle, user: str, path: Path, quarantine: Path) -> bool:
    snap_id = quarantine.name.rsplit(".", 1)[-1]
    with home_lock(lc.quarantine_root, user):
        current = queries.get_home(lc.db, user)
        if current.state != ARCHIVED or current.quarantine_path != str(quarantine):
            return False  # a login got there first
        if _only_notice(path) and (path / NOTICE_NAME).exists():
            return False  # another worker finished it meanwhile
        snap = lc.repo.find_snapshot(snap_id, user)
        log.warning("finishing the interrupted archive of %s", user)
        _move_to_quarantine(lc, user, path, quarantine, snap)
    return True


def _dead_here(worker: str | None) -> bool:
    """True if ``worker`` (``kind:host:pid``) ran on this host and its process is gone:
    a restarted archiver need not wait for its dead predecessor's claim to expire."""
    if not worker or worker.count(":") < 2:
        return False
    _kind, host, pid = worker.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def purge_quarantine(lc: Lifecycle) -> list[str]:
    """Remove quarantined files that are no longer needed; returns the folders removed.

    A quarantine is removed, under its home's lock and after re-reading the home, when
    its home is ``archived`` with the move finished and ``archived_at`` is older than
    ``quarantine_for``, or when no home references it any more and its folder is older
    than that. One referenced by a home that is ``restoring``, ``failed`` (it may be the
    last good copy), or mid-move is kept.
    """
    root = lc.quarantine_root
    if not root.is_dir():
        return []
    cutoff = lc.now() - lc.quarantine_for
    owners = {h.quarantine_path: h.user for h in queries.list_homes(lc.db) if h.quarantine_path}
    removed: list[str] = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        user = owners.get(str(entry)) or user_from_key(entry.name.rsplit(".", 1)[0])
        with home_lock(root, user) if user else contextlib.nullcontext():
            if not entry.exists():
                continue  # a restore moved it back meanwhile
            if not _purgeable(lc, entry, user, cutoff):
                continue
            log.info("removing quarantined %s", entry.name)
            remove_path(entry)
        removed.append(entry.name)
    return removed


def _purgeable(lc: Lifecycle, entry: Path, user: str | None, cutoff: dt.datetime) -> bool:
    home = None
    if user is not None:
        try:
            home = queries.get_home(lc.db, user)
        except queries.HomeNotFound:
            home = None
    if home is not None and home.quarantine_path == str(entry):
        if home.state != ARCHIVED or home.archived_at is None:
            return False  # restoring, failed or otherwise in use
        path = Path(home.path)
        if not (path / NOTICE_NAME).exists() or not _only_notice(path):
            return False  # the move is not finished (recover() will)
        return home.archived_at <= cutoff
    # Nobody references it: a restore came from the bucket, or a move was undone.
    when = dt.datetime.fromtimestamp(entry.lstat().st_mtime, tz=dt.UTC)
    return when <= cutoff
