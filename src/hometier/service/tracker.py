"""Restores in flight in this process, with their progress, for pollers and streams.

The database decides who restores (``restore_home`` joins a restore running in another
replica); this tracker only lets several requests in *this* process share one job and
watch its progress, and decides which waiting restore runs next.

How many at once: at most the pool's threads (``Service.restore_concurrency``); of
downloads, one per core at any time and more only while the CPU has room
(``hometier.cpu.Admission``). A restore that costs nothing is not held back, nor is the
download of a small home (``light``): it waits on requests more than on the CPU, and
several at once finish sooner.

Order: first come, first served, with a bounded overtake. A restore that costs nothing
to speak of (the home is already on the volume, or its files are still in the quarantine:
a few renames) may start before earlier ones that must download a home, but no waiting
restore is passed by more than ``OVERTAKE`` later ones: when a class logs in at once, the
students whose homes are still in the quarantine get in at once, and nobody waits
behind an unbounded stream of them.

A job's ``message`` and ``error`` are what its user is shown: for a failure, the words
of ``restoring.user_message`` with a reference, never the detail (bucket, keys, paths).
The detail is in the log under the same reference, and in ``detail``, which ``doc``
gives admins only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from hometier.cpu import Admission
from hometier.cpu import admission as make_admission
from hometier.engine.restore import RestoreProgress
from hometier.errors import Error
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.restoring import (
    RestoreFailed,
    RestoreResult,
    classify,
    recorded_failure,
    restore_home,
)
from hometier.service.outages import detail_of, is_state_outage
from hometier.state import queries

log = logging.getLogger(__name__)

KEEP_FINISHED = 600.0
"""Seconds a finished job stays visible to pollers."""

OVERTAKE = 8
"""How many later restores may start before a waiting one."""

LIGHT_FILES = 1000
LIGHT_BYTES = 16 * 1024 * 1024
"""A home of at most this many files and bytes (as last archived) downloads without
waiting for the admission: a few requests and a few hundred files, tens of
milliseconds of CPU."""


def restore_cost(home: Any) -> int:
    """0 when restoring ``home`` costs nothing to speak of (it is on the volume, or its
    quarantine still holds its files: a few renames), 1 when it must be downloaded.
    Downloads are not ranked by size among themselves: they keep their arrival order."""
    if home.state == "active":
        return 0
    quarantine = getattr(home, "quarantine_path", None)
    if quarantine and os.path.isdir(quarantine):
        return 0
    return 1


def light_download(home: Any) -> bool:
    """Whether downloading ``home`` is too small to wait for the CPU (``LIGHT_FILES``,
    ``LIGHT_BYTES``). A home whose size is not known (0 files) is not light."""
    files, size = home.hot_files or 0, home.hot_bytes or 0
    return 0 < files <= LIGHT_FILES and size <= LIGHT_BYTES


def _gated(job: Job) -> bool:
    """Whether ``job`` must wait for the admission: a download that is not light."""
    return job.cost != 0 and not job.light


@dataclass
class Job:
    user: str
    state: str = "running"
    """``running``, ``done`` or ``failed``."""
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = "Restoring your files"
    error: str | None = None
    reason: str | None = None
    """Why it failed (a key of ``restoring.REASONS``)."""
    reference: str | None = None
    """Of a failure: in the user's message and in the log line with the detail."""
    detail: str | None = None
    """Of a failure: what went wrong, where (admins only)."""
    result: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    seq: int = 0
    """Grows on every change: streams send an event when it moves."""
    queued: bool = False
    """Waiting for a free slot of the restore pool."""
    ahead: int = 0
    """While queued: restores that will start before this one."""
    began: float | None = None
    """When it left the queue and started."""
    cost: int | None = field(default=None, repr=False)
    light: bool = field(default=False, repr=False)
    overtaken: int = field(default=0, repr=False)
    actor: str = field(default="", repr=False)

    def doc(self, admin: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["cost"], d["light"], d["overtaken"], d["actor"]
        if not admin:
            del d["detail"]
        d["progress"] = (
            round(100 * self.bytes_done / self.bytes_total) if self.bytes_total else None
        )
        return d


class Tracker:
    def __init__(
        self,
        lc: Lifecycle,
        executor: Executor,
        on_finish: Callable[[Job, RestoreResult | None], None] | None = None,
        *,
        overtake: int = OVERTAKE,
        admission: Admission | None = None,
    ) -> None:
        self.lc = lc
        self.executor = executor
        self.on_finish = on_finish
        self.overtake = overtake
        self.admission = admission or make_admission(adaptive=False)
        """Holds downloads back while the CPU has no room; by default it never does."""
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        """Accepted, not started yet, in arrival order."""
        self._downloading = 0
        """Started restores that download a home (through the admission or light)."""
        self._lock = threading.Lock()

    def get(self, user: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(user)
            if job and job.finished and time.time() - job.finished > KEEP_FINISHED:
                del self._jobs[user]
                return None
            return job

    def start(
        self, user: str, actor: str, cost: int | None = None, *, light: bool = False
    ) -> tuple[Job, bool]:
        """The job for ``user`` (joined, whether it waits or runs) or a new one, queued;
        (job, started here). ``cost`` (``restore_cost``) lets a cheap restore overtake;
        None counts as expensive. A ``light`` download (of a small home) keeps its place
        in the queue but does not wait for the admission."""
        with self._lock:
            job = self._jobs.get(user)
            if job is not None and job.state == "running":
                return job, False
            job = Job(user, queued=True, cost=cost, light=light, actor=actor)
            self._jobs[user] = job
            self._pending.append(job)
            self._positions()
        self.executor.submit(self._next)
        if not _gated(job):
            # Pool threads may all be waiting for the admission: one of them takes this
            # job now rather than at its next look.
            self.admission.wake()
        return job, True

    def _positions(self) -> None:
        """Tell every waiting job how many arrived before it and still wait (under the
        lock). A cheap restore may start sooner than that; an expensive one later by at
        most ``overtake``."""
        for i, job in enumerate(self._pending):
            if job.ahead != i or job.seq == 0:
                job.ahead = i
                job.message = "Waiting for a free restore slot" + (
                    f": {i} restore(s) ahead of yours" if i else ""
                )
                job.seq += 1

    def _choice(self, pending: list[Job]) -> int:
        """Index of the job to start next: the head, unless a cheaper one waits behind it
        and the head (passed at least as often as any job behind it, since every overtake
        passes it too) has not been passed ``overtake`` times."""
        head = pending[0]
        if head.overtaken >= self.overtake:
            return 0

        def cost(j: Job) -> float:
            return float("inf") if j.cost is None else j.cost

        best = min(range(len(pending)), key=lambda i: (cost(pending[i]), i))
        return best if cost(pending[best]) < cost(head) else 0

    def _ungated(self, pending: list[Job]) -> int | None:
        """Index of the first waiting job that need not wait for the admission, if the
        jobs before it may still be passed."""
        for i, job in enumerate(pending):
            if not _gated(job):
                return i if i == 0 or pending[0].overtaken < self.overtake else None
        return None

    def _next(self) -> None:
        """Run by a pool thread: start the job that is next, by ``_choice``, once the
        admission lets a download start (a job that costs nothing, or a light one, starts
        at once)."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                first = self._choice(self._pending)
                i: int | None = first
                gated = _gated(self._pending[first])
                if gated and not self.admission.enter():
                    # The download next in line waits for the CPU; a restore that need
                    # not (a light download) may go meanwhile, within the overtake bound.
                    i, gated = self._ungated(self._pending), False
                if i is not None:
                    for j in self._pending[:i]:
                        j.overtaken += 1
                    job = self._pending.pop(i)
                    downloads = job.cost != 0
                    self._downloading += downloads
                    job.queued, job.ahead, job.began = False, 0, time.time()
                    job.message = "Restoring your files"
                    job.seq += 1
                    self._positions()
                    break
            self.admission.wait()
        try:
            self._run(job, job.actor)
        finally:
            if gated:
                self.admission.leave()
            with self._lock:
                self._downloading -= downloads

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def downloading(self) -> int:
        with self._lock:
            return self._downloading

    def _run(self, job: Job, actor: str) -> None:
        def progress(p: RestoreProgress) -> None:
            with self._lock:
                job.bytes_done, job.bytes_total = p.bytes_done, p.bytes_total
                job.message = (
                    f"Restoring your files: {p.bytes_done / 1e6:.0f} of "
                    f"{p.bytes_total / 1e6:.0f} MB"
                )
                job.seq += 1

        result: RestoreResult | None = None
        try:
            result = restore_home(self.lc, job.user, actor, progress=progress)
            with self._lock:
                job.state = "done"
                job.result = dataclasses.asdict(result)
                # The conflicts folder by its name in the home, not its path on the server.
                where = os.path.basename(result.conflicts_dir or "")
                job.result["conflicts_dir"] = where or None
                job.message = (
                    "Your files are back"
                    if result.outcome != "active"
                    else "Your files are on the volume"
                )
                if result.conflicts:
                    job.message += (
                        f"; {len(result.conflicts)} item(s) that appeared meanwhile were "
                        f"kept and the archived versions put in the folder {where} of your home"
                    )
        except Exception as exc:  # noqa: BLE001 - reported to the waiting spawn, and logged
            failed = self._failure(job.user, exc)
            with self._lock:
                job.state, job.reason, job.reference = "failed", failed.reason, failed.ref
                job.error = job.message = failed.user_message()
                job.detail = failed.get_message()
        finally:
            with self._lock:
                job.finished = time.time()
                job.seq += 1
            if self.on_finish is not None:
                self.on_finish(job, result)

    @staticmethod
    def _failure(user: str, exc: Exception) -> RestoreFailed:
        """``exc`` as a ``RestoreFailed`` (with a reason and a reference), logged once
        (``restore_home`` logged its own failures already)."""
        if isinstance(exc, RestoreFailed):
            return exc
        if is_state_outage(exc):
            failed = RestoreFailed(user, detail_of(exc), reason="database")
            log.warning("restore of %s failed [reference %s]: %s", user, failed.ref, failed.detail)
        elif isinstance(exc, Error):
            failed = RestoreFailed(user, exc.get_message(), reason=classify(exc))
            log.warning("restore of %s failed [reference %s]: %s", user, failed.ref, failed.detail)
        else:
            failed = RestoreFailed(user, detail_of(exc), reason="internal")
            log.exception("restore of %s failed [reference %s]", user, failed.ref)
        return failed

    def state_doc(self, user: str, admin: bool = False) -> dict[str, Any]:
        """What a poller sees: the job in this process, else the database's view."""
        job = self.get(user)
        if job is not None:
            return job.doc(admin)
        try:
            home = queries.get_home(self.lc.db, user)
        except queries.HomeNotFound:
            return {"user": user, "state": "done", "message": "Nothing to restore"}
        state = {"active": "done", "restoring": "running", "failed": "failed"}.get(home.state)
        doc: dict[str, Any] = {
            "user": user,
            "state": state or "idle",
            "home_state": home.state,
            "message": "",
        }
        failed = recorded_failure(self.lc, user) if home.state == "failed" else None
        if failed is not None:
            doc.update(
                message=failed.user_message(),
                error=failed.user_message(),
                reason=failed.reason,
                reference=failed.ref,
            )
            if admin:
                doc["detail"] = failed.get_message()
        return doc
