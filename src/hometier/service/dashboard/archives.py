""" "Archive now" from the dashboard: in the background, one at a time per home, with
progress, recorded as the admin who asked.

An archive of a big home takes minutes; the request that starts it answers at once and
the home's page follows the job (it reloads itself while the job runs). The archive runs
``lifecycle.cycle.archive_home`` with the worker named ``dashboard:ADMIN:host:pid``, so
the claim and every event it writes name the admin (and a crash of this process is
recognized by ``recover`` like any archiver's). Progress is what can be known without
reaching into the engine: the phase the database shows (claimed, archived), the home's
size and the bytes this process has uploaded since the job began.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier.errors import Error
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home
from hometier.service.dashboard.summary import human_bytes
from hometier.service.outages import stand_in

log = logging.getLogger(__name__)

KEEP_FINISHED = 900.0
"""Seconds a finished job stays on its home's page."""


@dataclass
class ArchiveJob:
    user: str
    admin: str
    state: str = "running"
    """``running``, ``done`` or ``failed``."""
    outcome: str | None = None
    message: str = "Archiving: taking a snapshot of the home"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    put_bytes_at_start: int = 0
    uploaded: int = 0

    @property
    def elapsed(self) -> int:
        """Whole seconds since it started (until it finished)."""
        return int((self.finished or time.time()) - self.started)


def _put_bytes(lc: Lifecycle) -> int:
    try:
        return int(lc.repo.store.stats.snapshot()["bytes"].get("put", 0))
    except Exception:  # noqa: BLE001 - progress is a nicety
        return 0


class BackgroundArchives:
    """Archives started from the dashboard, at most ``workers`` at once."""

    def __init__(self, lc: Lifecycle, workers: int = 2) -> None:
        self.lc = lc
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dash-archive")
        self._jobs: dict[str, ArchiveJob] = {}
        self._lock = threading.Lock()

    def get(self, user: str) -> ArchiveJob | None:
        with self._lock:
            job = self._jobs.get(user)
            if job is not None and job.finished and time.time() - job.finished > KEEP_FINISHED:
                del self._jobs[user]
                return None
            if job is not None and job.state == "running":
                job.uploaded = max(0, _put_bytes(self.lc) - job.put_bytes_at_start)
            return job

    def running(self) -> list[ArchiveJob]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state == "running"]

    def start(self, user: str, admin: str) -> tuple[ArchiveJob, bool]:
        """The running job for ``user`` (joined) or a new one; (job, started here)."""
        with self._lock:
            job = self._jobs.get(user)
            if job is not None and job.state == "running":
                return job, False
            job = ArchiveJob(user, admin, put_bytes_at_start=_put_bytes(self.lc))
            self._jobs[user] = job
        self._pool.submit(self._run, job)
        return job, True

    def worker_name(self, admin: str) -> str:
        return f"dashboard:{admin}:{socket.gethostname()}:{os.getpid()}"

    def _run(self, job: ArchiveJob) -> None:
        lc = dataclasses.replace(self.lc, worker=self.worker_name(job.admin))
        try:
            result = archive_home(lc, job.user)
            state = "done" if result.outcome == "archived" else "failed"
            text = f"Archive of {job.user}: {result.outcome}"
            if result.reason:
                text += f" ({result.reason})"
            if result.outcome == "archived":
                text += f"; {human_bytes(result.bytes)} now only in the bucket."
            outcome = result.outcome
        except Error as exc:
            public = stand_in(exc)
            if public is not None:
                log.warning("archive of %s [reference %s]: %s", job.user, public.ref, public.detail)
            state, outcome = "failed", "refused"
            text = f"Archive of {job.user} not done: {(public or exc).get_message()}"
        except Exception:  # noqa: BLE001 - shown on the page, logged with the traceback
            log.exception("archive of %s from the dashboard failed", job.user)
            state, outcome = "failed", "failed"
            text = f"Archive of {job.user} failed; the service's log says why."
        with self._lock:
            job.state, job.outcome, job.message = state, outcome, text
            job.finished = time.time()
            job.uploaded = max(0, _put_bytes(self.lc) - job.put_bytes_at_start)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["ArchiveJob", "BackgroundArchives"]
