"""What the service tells people through ``hometier.notify``: the words of each message,
and the callbacks that send them from the archive and restore paths.

- A home archived (by the loop, the API or the dashboard): its user, with the way back
  ("log in and your files come back").
- An archive that failed: the admins, with the reason.
- A restore that failed (at login, from the dashboard or the API): the admins, with
  what the user was told, the reason and the reference of the log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hometier.notify import Notifier
from hometier.service.dashboard.summary import human_bytes

log = logging.getLogger(__name__)


def archive_notice(notifier: Notifier, result: Any, seconds: float | None = None) -> None:
    """``Lifecycle.on_archive``: tell the user their home was archived, or the admins
    that an archive failed."""
    user = result.user
    if result.outcome == "archived":
        size = human_bytes(result.bytes) if result.bytes else "its files"
        notifier.notify(
            "archived",
            user,
            "Your JupyterHub files were archived",
            f"Hello {user},\n\n"
            f"Your home folder on JupyterHub was not used for a while, so its files "
            f"({size}) were moved to archive storage. Nothing was lost.\n\n"
            "To get them back, log in to JupyterHub and start your server: your files "
            "come back first, exactly as they were. That start can take a little longer "
            "than usual.\n",
            snapshot=result.snapshot,
            bytes=result.bytes,
        )
    elif result.outcome == "failed":
        notifier.notify(
            "archive-failed",
            user,
            f"hometier: archiving {user} failed",
            f"The archive of {user}'s home failed: {result.reason or 'no reason recorded'}.\n"
            "The home was not changed: its files are still on the volume. The service's "
            "log has the detail; the dashboard shows the home's event log.\n",
            reason=result.reason,
            details=list(result.details)[:10],
        )


def restore_notice(notifier: Notifier, job: Any, result: Any) -> None:
    """``Tracker.on_finish``: tell the admins when a restore failed."""
    if job.state != "failed":
        return
    notifier.notify(
        "restore-failed",
        job.user,
        f"hometier: restoring {job.user} failed ({job.reason or 'error'})",
        f"The restore of {job.user}'s home failed (reason: {job.reason or 'unknown'}, "
        f"reference {job.reference}).\n\nThe user was told: {job.error}\n\n"
        f"Detail: {job.detail}\n\nThe archive is unchanged; the home is marked failed "
        "and the next login tries again. The dashboard shows the home and its event log.\n",
        reason=job.reason,
        reference=job.reference,
        detail=job.detail,
    )


def chain(*callbacks: Callable[..., None] | None) -> Callable[..., None]:
    """One callback that calls each of ``callbacks``; one failing does not stop the
    others (a notification must never break an archive or a restore)."""
    present = [c for c in callbacks if c is not None]

    def call(*args: Any) -> None:
        for c in present:
            try:
                c(*args)
            except Exception:  # noqa: BLE001 - logged, the others still run
                log.exception("callback %r failed", c)

    return call


def install_notifier(lc: Any, config: Any = None) -> Notifier:
    """For a process that runs the archiver loop without the API (``serve --no-api``):
    a ``Notifier`` from ``config`` whose archive notices ride on ``lc.on_archive``,
    keeping whatever callback was there."""
    notifier = Notifier(config=config)
    lc.on_archive = chain(
        lc.on_archive, lambda result, seconds=None: archive_notice(notifier, result, seconds)
    )
    return notifier


__all__ = ["archive_notice", "chain", "install_notifier", "restore_notice"]
