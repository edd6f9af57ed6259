"""Bring an archived home back: ``archived → restoring → active``, joined, never clobbering.

One caller performs a restore; concurrent callers (a second login, a lease) join it by
waiting for the state to change. Files that appeared in the home meanwhile are kept: the
snapshot's versions of those names go into a conflicts folder, and the result says so.
A restore whose worker died is taken over: a live restorer holds the home's lock
(``locks.home_lock``) for the whole restore, so ``restoring`` with a free lock, for
longer than a short grace period, means its process is gone.

A failure has two texts. ``RestoreFailed.get_message()`` is for operators (CLI, log,
the home's ``error`` in the database, admins): it names what failed, where. The sentence
a user sees (``user_message``: API, spawn page, dashboard) says only *why* in words
(``REASONS``: storage unreachable, archive damaged, volume full, ...) and a short
reference that the log line and the database's error carry too; never a bucket, an
endpoint, an object key or a server path.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import time
from collections.abc import Callable

from hometier.engine.check import CheckFailed
from hometier.engine.fsutil import open_dir, write_new_file
from hometier.engine.restore import RestoreProgress
from hometier.engine.verify import VerifyFailed
from hometier.errors import Error, IntegrityError, new_reference
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.install import HomeNotAFolder, RestoreResult, bring_back
from hometier.lifecycle.locks import HomeBusy, home_lock, lock_is_free
from hometier.lifecycle.moves import Quarantine, open_home_parent
from hometier.lifecycle.recovery import recover_archive_locked
from hometier.repo.config import NotARepository, RepositoryNotFound, UnsupportedVersion
from hometier.repo.repository import SnapshotNotFound
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state import ACTIVE, ARCHIVED, FAILED, RESTORING, queries
from hometier.state.models import Home
from hometier.store.errors import ObjectNotFound, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

POLL = 0.25
TAKEOVER_GRACE = dt.timedelta(seconds=10)
"""A restore takes its lock right after the database step; allow it that moment."""


_SAFE = (
    "They are safe in the archive. Please try again later; if it keeps failing, tell your "
    "hub's administrators and quote the reference"
)
_SOON = "They are safe in the archive. Please try again in a few minutes"
REASONS: dict[str, tuple[str, str]] = {
    "storage": ("the archive storage is unreachable", _SAFE),
    "storage-refused": ("the archive storage refused the request", _SAFE),
    "damaged": (
        "part of the archive is damaged",
        "Nothing in your home folder was changed. Please tell your hub's administrators and"
        " quote the reference",
    ),
    "volume-full": ("there is no space left on the home volume", _SAFE),
    "volume": ("your home folder could not be written", _SAFE),
    "not-a-folder": ("your home folder is not a regular folder", _SAFE),
    "no-snapshot": (
        "no complete archive of your files exists",
        "Please tell your hub's administrators and quote the reference",
    ),
    "busy": ("another restore of your files is still running", _SOON),
    "database": ("the state database is unreachable", _SOON),
    "internal": ("an internal error occurred", _SAFE),
}
"""Why a restore failed and what to do, as a user is told it: ``RestoreFailed.reason``."""


class RestoreFailed(Error):
    """Your files could not be restored ({}). They are safe in the archive; please try
    again in a few minutes or contact your hub's administrators. ({}) [reference {}]

    ``reason`` (a key of ``REASONS``) and ``ref`` make the text a user is shown
    (``user_message``); the message above, with the detail, is for operators."""

    exit_code = 8
    http_status = 503

    def __init__(
        self, user: str, detail: str, *, reason: str = "internal", ref: str | None = None
    ) -> None:
        self.reason = reason if reason in REASONS else "internal"
        self.ref = ref or new_reference()
        self.detail = detail
        super().__init__(user, detail, self.ref)

    def user_message(self) -> str:
        return user_message(self.reason, self.ref)


def user_message(reason: str | None, ref: str | None) -> str:
    """What a user is told about a failed restore: why in words, what to do, the
    reference. Nothing in it names a bucket, an endpoint, a key or a path."""
    why, advice = REASONS.get(reason or "", REASONS["internal"])
    return f"Your files could not be restored: {why}. {advice}" + (
        f" (reference {ref})." if ref else "."
    )


def classify(exc: BaseException) -> str:
    """The ``REASONS`` key for a failure, from the error and what caused it."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, RestoreFailed):
            return e.reason
        if isinstance(e, StoreUnavailable):
            return "storage"
        if isinstance(e, ObjectNotFound | IntegrityError | VerifyFailed | CheckFailed):
            return "damaged"
        if isinstance(e, StoreError | RepositoryNotFound | NotARepository | UnsupportedVersion):
            return "storage-refused"
        if isinstance(e, HomeNotAFolder):
            return "not-a-folder"
        if isinstance(e, NothingToRestore):
            return "no-snapshot"
        if isinstance(e, HomeBusy):
            return "busy"
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "volume-full"
    if any(isinstance(e, OSError) for e in chain):
        return "volume"
    return "internal"


def recorded_failure(lc: Lifecycle, user: str) -> RestoreFailed | None:
    """The failure the database holds for ``user``'s ``failed`` home (its last error
    event), rebuilt with its reason and reference; None if the home is not failed."""
    home = queries.get_home(lc.db, user)
    if home.state != FAILED:
        return None
    reason, ref = None, None
    for ev in queries.events(lc.db, user, kind="error", limit=1, newest_first=True):
        recorded = ev.detail or {}
        reason, ref = recorded.get("reason"), recorded.get("reference")
    detail = (home.error or "the restore failed").removesuffix(f" (reference {ref})")
    return RestoreFailed(user, detail, reason=reason or "internal", ref=ref)


class NothingToRestore(Error):
    """No snapshot of {} exists to restore from."""

    exit_code = 3
    http_status = 404


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
        mine = queries.request_restore(lc.db, user, actor, lc.now())
    except queries.HomeNotFound:
        return RestoreResult(user, ACTIVE)
    if mine is not None:
        return _perform(lc, mine, actor, progress, started)
    waited = False
    while True:
        home = queries.get_home(lc.db, user)
        if home.state != RESTORING:
            break
        waited = True
        if lc.now() - home.state_since > TAKEOVER_GRACE and lock_is_free(lc.quarantine_root, user):
            log.warning("restore of %s was abandoned (its process is gone); taking it over", user)
            try:
                took = queries.transition(
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
            return _perform(lc, took, actor, progress, started)
        if time.monotonic() - started > lc.restore_wait.total_seconds():
            busy = RestoreFailed(
                user, "another restore of this home is still running", reason="busy"
            )
            log.warning("restore of %s gave up waiting [reference %s]", user, busy.ref)
            raise busy
        time.sleep(POLL)
    if home.state == FAILED:
        # The restore this call joined failed: the same failure, reference and all.
        failed = recorded_failure(lc, user)
        if failed is not None:
            raise failed
    outcome = ("joined" if waited else "active") if home.state == ACTIVE else home.state
    return RestoreResult(user, outcome, seconds=time.monotonic() - started)


def recorded_snapshot(lc: Lifecycle, home: Home) -> Snapshot:
    """The snapshot a restore of this home brings back: the one its archive recorded in
    the database — never simply the newest (a later ``backup`` of the empty home, or a
    replica whose clock runs ahead, would make that the notice alone). Homes archived
    before the column existed name it in their ``archived`` event."""
    sid = home.archived_snapshot
    if sid is None:
        for ev in queries.events(lc.db, home.user, limit=200, kind="state", newest_first=True):
            found = (ev.detail or {}).get("snapshot")
            if ev.to_state == ARCHIVED and isinstance(found, str):
                sid = found
                break
    if sid is None and home.quarantine_path:
        sid = home.quarantine_path.rsplit(".", 1)[-1]
    if sid is None:
        snaps = [s for s in lc.repo.list_snapshots(home.user) if s.stats.complete]
        if not snaps:
            raise NothingToRestore(home.user)
        log.warning("%s: no archive recorded which snapshot it made; taking the newest", home.user)
        return snaps[-1]
    try:
        return lc.repo.find_snapshot(sid, home.user)
    except SnapshotNotFound as exc:
        raise RestoreFailed(
            home.user, f"the archived snapshot {sid[:12]} is missing", reason="damaged"
        ) from exc


def _perform(
    lc: Lifecycle, home: Home, actor: str, progress: ProgressFn | None, started: float
) -> RestoreResult:
    """Restore ``home``, which this process just made ``restoring`` (its row as that
    step returned it: no second read)."""
    user = home.user
    result = RestoreResult(user, "restored")
    try:
        snap = recorded_snapshot(lc, home)
        result.snapshot = snap.id
        with home_lock(lc.quarantine_root, user, timeout=lc.restore_wait.total_seconds()):
            if (Quarantine.pending(lc.quarantine_root, local_key(user)) or {}).get(
                "op"
            ) == "archive":
                recover_archive_locked(lc, user, restoring=True)  # a crash interrupted it
                home = queries.get_home(lc.db, user)
            bring_back(lc, home, snap, progress, result)
        result.bytes, result.files = snap.stats.bytes, snap.stats.files
        detail_fields = {"hot_bytes": snap.stats.bytes, "hot_files": snap.stats.files}
        queries.finish_restore(lc.db, user, actor, lc.now(), **detail_fields)
    except (Error, OSError) as exc:
        msg = exc.get_message() if isinstance(exc, Error) else f"{exc.strerror or exc}"
        failed = RestoreFailed(user, msg, reason=classify(exc))
        log.error(
            "restoring %s failed [reference %s, %s]: %s", user, failed.ref, failed.reason, msg
        )
        _put_notice_back(lc, user)
        # The home's error is the operator's detail; the event also keeps what the user
        # was told (reason, reference), so any replica can tell it again.
        error = f"{msg} (reference {failed.ref})"
        queries.transition(
            lc.db,
            user,
            RESTORING,
            FAILED,
            actor,
            lc.now(),
            kind="error",
            detail={"error": error, "reason": failed.reason, "reference": failed.ref},
            error=error,
        )
        raise failed from exc
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


def _put_notice_back(lc: Lifecycle, user: str) -> None:
    """After a failed restore, an empty home gets a notice again (created by descriptor,
    never through a name the user planted); anything else is left as it is."""
    try:
        parent_fd, name = open_home_parent(lc.layout, user)
        try:
            fd = open_dir(name, parent_fd)
        finally:
            os.close(parent_fd)
        try:
            if not os.listdir(fd):
                write_new_file(fd, NOTICE_NAME, RETRY_NOTICE.encode(), 0o444)
        finally:
            os.close(fd)
    except OSError:
        pass


RETRY_NOTICE = "Your files are archived; they come back at your next login.\n"

__all__ = [
    "ARCHIVED",
    "HomeNotAFolder",
    "REASONS",
    "NothingToRestore",
    "RestoreFailed",
    "RestoreResult",
    "classify",
    "recorded_snapshot",
    "recorded_failure",
    "restore_home",
    "user_message",
]
