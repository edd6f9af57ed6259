"""Several hometier replicas on one database: each due time fires once, each run is
carried out by one process, and a run whose process died is noticed and retried.

Real processes race on a real PostgreSQL (``SKIP LOCKED``) and on one SQLite file
(its single writer); the scheduler's own ``fire_due``/``claim_runs`` are what race.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import time
import types
from collections import Counter
from pathlib import Path

import pytest

from hometier.jobs import spec
from hometier.jobs.context import JobsContext
from hometier.jobs.hubapi import HubAPI
from hometier.jobs.scheduler import Scheduler
from hometier.state import jobs as jq
from hometier.state import open_database, queries

JOBS = 40
RACE_SECONDS = 3.0


def _replica(url: str, name: str, start: object, out: multiprocessing.Queue) -> None:
    db = open_database(url, migrate=False)
    jq.list_jobs(db)  # connected before the start, so both race from the first moment
    start.wait()  # type: ignore[attr-defined]
    until = time.time() + RACE_SECONDS
    fired, claimed = [], []
    while time.time() < until:
        now = dt.datetime.now(dt.UTC)
        fired += [r.id for r in jq.fire_due(db, now, spec.next_time, limit=7)]
        claimed += [r.id for r in jq.claim_runs(db, name, now, limit=3)]
    out.put((name, fired, claimed))
    db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_two_replicas_fire_each_due_time_once_and_run_it_once(db_url: str) -> None:
    db = open_database(db_url)
    now = dt.datetime.now(dt.UTC)
    due = now - dt.timedelta(seconds=1)
    for i in range(JOBS):
        jq.create_job(
            db, f"u{i % 5}", "test", now, name=f"job{i}", path="a.ipynb",
            schedule="0 3 * * *", next_run_at=due,
        )  # fmt: skip
    db.dispose()
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue = ctx.Queue()
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_replica, args=(db_url, f"r{n}", start, q)) for n in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    db = open_database(db_url, migrate=False)
    try:
        _check(db, results, now, due)
    finally:
        db.dispose()


def _check(db: object, results: list, now: dt.datetime, due: dt.datetime) -> None:
    runs = [r for j in jq.list_jobs(db) for r in jq.list_runs(db, j.id)]
    per_job = Counter(r.job_id for r in runs)
    fired = Counter(rid for _, f, _ in results for rid in f)
    claimed = Counter(rid for _, _, c in results for rid in c)
    print(
        f"{db.dialect}: fired by replica",  # type: ignore[attr-defined]
        {n: len(f) for n, f, _ in results},
        "claimed by replica",
        {n: len(c) for n, _, c in results},
    )
    assert len(per_job) == JOBS and set(per_job.values()) == {1}, per_job
    assert all(n == 1 for n in fired.values()) and len(fired) == JOBS
    assert all(n == 1 for n in claimed.values()) and len(claimed) == JOBS
    assert {r.state for r in runs} == {jq.RUNNING}
    assert all(r.scheduled_for == due for r in runs)
    # Every job moved on to its next time, once.
    assert all(j.next_run_at is not None and j.next_run_at > now for j in jq.list_jobs(db))


def test_a_run_whose_process_died_is_failed_cleaned_up_and_retried(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'state.db'}")
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    queries.get_or_create_home(db, "ada", str(tmp_path / "ada"), t0)
    job = jq.create_job(
        db, "ada", "test", t0, name="j", path="a.ipynb", retries=1, retry_delay=0,
    )  # fmt: skip
    run = jq.enqueue(db, job.id, "test", t0)
    [run] = jq.claim_runs(db, "dead-replica", t0)
    lease = queries.acquire_lease(db, "ada", "job", "", dt.timedelta(hours=3), t0)
    jq.note_resources(db, run.id, "dead-replica", lease_id=lease.id)
    lc = types.SimpleNamespace(db=db, now=lambda: dt.datetime.now(dt.UTC))
    ctx = JobsContext(lc=lc, hub=HubAPI("http://127.0.0.1:9/hub/api", "", ""))  # type: ignore[arg-type]
    taken = asyncio.run(Scheduler(ctx).recover())
    assert [r.id for r in taken] == [run.id]
    again = jq.get_run(db, run.id)
    assert again.state == jq.FAILED and "stopped" in (again.reason or "")
    assert queries.active_leases(db, "ada", lc.now()) == []  # its lease is released
    [retry, _] = jq.list_runs(db, job.id)
    assert (retry.attempt, retry.trigger, retry.state) == (2, "retry", jq.QUEUED)
    # The dead process, if it was only slow, learns it lost the run and records nothing.
    with pytest.raises(jq.ClaimLost):
        jq.heartbeat(db, run.id, "dead-replica", lc.now())
    with pytest.raises(jq.ClaimLost):
        jq.finish_run(db, run.id, "dead-replica", jq.SUCCEEDED, lc.now())
    assert asyncio.run(Scheduler(ctx).recover()) == []  # once only
    db.dispose()
