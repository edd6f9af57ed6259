"""The scheduler: fire due jobs, claim queued runs, notice runs whose process died.

One ``Scheduler`` runs in each hometier process that serves the API (a thread with its
own asyncio loop, beside the archiver loop). Every ``poll`` seconds it

1. **recovers**: runs left ``running`` by a process whose heartbeat stopped for
   ``stale_after`` are marked failed (their next attempt queued if the job allows) and
   what they held is stopped: the server they started, their token, their lease;
2. **fires**: every unpaused job whose ``next_run_at`` has come gets a queued run, and
   its next time moves on (missed times during an outage fire once);
3. **claims** as many queued runs as it has free slots (``concurrency``) and runs each.

All three are single transactions that lock rows with ``SKIP LOCKED`` on PostgreSQL, so
any number of replicas can run this loop on one database: each due time becomes exactly
one run, and each run is carried out by exactly one process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from hometier.jobs import spec
from hometier.jobs.context import JobsContext
from hometier.jobs.runner import execute_run, release
from hometier.state import jobs as jq

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, ctx: JobsContext) -> None:
        self.ctx = ctx
        self.running: dict[int, asyncio.Task[Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # -- one pass ---------------------------------------------------------------------

    async def recover(self) -> list[jq.JobRun]:
        ctx = self.ctx
        stale = await asyncio.to_thread(jq.take_stale, ctx.lc.db, ctx.lc.now(), ctx.stale_after)
        for run in stale:
            log.warning("run %s (held by %s) was abandoned; cleaning up", run.id, run.claimed_by)
            await release(
                ctx, run.user, run.server_name, run.server_started, run.token_id, run.lease_id
            )
        return stale

    async def fire(self) -> list[jq.JobRun]:
        ctx = self.ctx
        return await asyncio.to_thread(jq.fire_due, ctx.lc.db, ctx.lc.now(), spec.next_time)

    async def claim(self) -> list[asyncio.Task[Any]]:
        ctx = self.ctx
        free = ctx.concurrency - len(self.running)
        if free <= 0:
            return []
        runs = await asyncio.to_thread(jq.claim_runs, ctx.lc.db, ctx.worker, ctx.lc.now(), free)
        tasks = []
        for run in runs:
            job = await asyncio.to_thread(jq.get_job, ctx.lc.db, run.job_id)
            task = asyncio.ensure_future(execute_run(ctx, run, job))
            self.running[run.id] = task
            task.add_done_callback(self._forget(run.id))
            tasks.append(task)
        return tasks

    def _forget(self, run_id: int) -> Any:
        return lambda _task: self.running.pop(run_id, None)

    async def tick(self) -> list[asyncio.Task[Any]]:
        """One pass: recover, fire, claim. Returns the tasks of the runs it started."""
        for step in (self.recover, self.fire):
            try:
                await step()
            except Exception:  # noqa: BLE001 - a database hiccup: try again next pass
                log.exception("jobs: %s failed", step.__name__)
        try:
            return await self.claim()
        except Exception:  # noqa: BLE001
            log.exception("jobs: claim failed")
            return []

    # -- the loop ---------------------------------------------------------------------

    async def run_forever(self) -> None:
        self._wake = asyncio.Event()
        log.info("jobs scheduler %s polling every %.1fs", self.ctx.worker, self.ctx.poll)
        try:
            while not self._stop.is_set():
                await self.tick()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.ctx.poll)
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            if tasks:
                # Each run cleans up (kernel, server, token, lease) and records itself
                # as interrupted, to be retried by whichever process runs next.
                await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """Look for work now (a run was queued through this process's API)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.run_forever())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="jobs-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        # The loop then cancels each run once; a run cancelled twice would stop
        # cleaning up halfway (its process's successor would finish the job).
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
