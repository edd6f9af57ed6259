"""Jobs on behalf of users in the state database: definitions, runs and sealed secrets.

Terms:

- A *job* is what a user asked for: a notebook or script in their home, a schedule (cron
  with a time zone, or once), parameters, the names of the secrets it needs, a timeout,
  retries, which server to run on and how many outputs to keep. ``next_run_at`` is when
  it fires next (None: never again, or paused).
- A *run* is one attempt: ``queued → running → succeeded | failed | cancelled``, or
  ``skipped`` (fired while the previous run was still going). Every attempt is its own
  row; a retry is a new row with ``attempt + 1``. ``(job_id, scheduled_for, attempt)`` is
  unique, so a due time fires once even if two processes race past the row lock.
- A *secret* is sealed by the caller (``hometier.crypto.Sealer``) before it gets here:
  nothing in this module ever sees a plaintext.

Claims: on PostgreSQL ``fire_due``, ``claim_runs`` and ``take_stale`` lock rows with
``FOR UPDATE SKIP LOCKED``, so several replicas take disjoint work; on SQLite the single
writer serializes them. A running run's ``heartbeat_at`` is renewed by the process that
runs it; one whose heartbeat is older than the caller's limit belongs to a dead process
and is taken over by ``take_stale``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from hometier.errors import Conflict, NotFound
from hometier.state.db import Database
from hometier.state.models import Base, Event, Home

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, SKIPPED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
)
RUN_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, SKIPPED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED, SKIPPED)


class Job(Base):
    """A user's scheduled notebook or script; see the module docstring."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("user", "name"), Index(None, "next_run_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    """Relative to the home; never absolute, never ``..``."""
    kind: Mapped[str] = mapped_column(String(16), default="notebook")
    schedule: Mapped[str] = mapped_column(String(255), default="")
    """A cron expression, or empty for a job that runs once at ``run_at``."""
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    run_at: Mapped[datetime | None]
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secrets: Mapped[list[str]] = mapped_column(JSON, default=list)
    timeout: Mapped[int] = mapped_column(Integer, default=3600)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    retry_delay: Mapped[int] = mapped_column(Integer, default=60)
    server: Mapped[str] = mapped_column(String(255), default="")
    """``""``: reuse the user's running default server, else start ``job-…``; ``"new"``:
    always start ``job-…``; another name: that named server (started if needed)."""
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The spawner's ``user_options`` for a server the run starts (a profile, an image)."""
    keep: Mapped[int] = mapped_column(Integer, default=5)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_by: Mapped[str | None] = mapped_column(String(255))
    next_run_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.user}/{self.name} {self.schedule or 'once'}>"


class JobRun(Base):
    """One attempt at a job; see the module docstring."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("job_id", "scheduled_for", "attempt"),
        Index(None, "state", "not_before"),
        Index(None, "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    user: Mapped[str] = mapped_column(String(255))
    trigger: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[datetime]
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    not_before: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    """What the owner is told (never a secret, a token or a server path)."""
    detail: Mapped[str | None] = mapped_column(Text)
    """What an operator needs besides (the log line has the same reference)."""
    output_path: Mapped[str | None] = mapped_column(Text)
    server_name: Mapped[str | None] = mapped_column(String(255))
    server_started: Mapped[bool] = mapped_column(Boolean, default=False)
    token_id: Mapped[str | None] = mapped_column(String(64))
    lease_id: Mapped[str | None] = mapped_column(String(36))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<JobRun {self.id} job={self.job_id} #{self.attempt} {self.state}>"


class JobSecret(Base):
    """A named secret of a user, sealed (``hometier.crypto``); never stored in clear."""

    __tablename__ = "job_secrets"
    __table_args__ = (UniqueConstraint("user", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobNotFound(NotFound):
    """No job {} is known."""


class RunNotFound(NotFound):
    """No run {} is known."""


class JobExists(Conflict):
    """{} already has a job named {!r}."""


class JobBusy(Conflict):
    """Job {} has a run in progress; cancel it first."""


class SecretNotFound(NotFound):
    """{} has no secret named {!r}."""


class ClaimLost(Conflict):
    """Run {} is no longer held by this process."""


Target = Database | Session
JOB_FIELDS = frozenset(
    {"name", "path", "kind", "schedule", "timezone", "run_at", "parameters", "secrets"}
    | {"timeout", "retries", "retry_delay", "server", "profile", "keep", "next_run_at"}
)


@contextmanager
def _tx(target: Target, write: bool = True) -> Iterator[Session]:
    if isinstance(target, Session):
        yield target
    else:
        with target.transaction(write) as session:
            yield session


def _pg(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def log_event(s: Session, user: str, actor: str, now: datetime, **detail: Any) -> None:
    """One ``job`` line in the event log (beside the home's own events)."""
    home_id = s.scalar(select(Home.id).where(Home.user == user))
    s.add(Event(home_id=home_id, user=user, at=now, kind="job", actor=actor, detail=detail))


# -- jobs ---------------------------------------------------------------------------------


def create_job(target: Target, user: str, actor: str, now: datetime, **fields: Any) -> Job:
    """A new job of ``user``; ``JobExists`` if the name is taken."""
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise TypeError(f"unknown job fields {sorted(unknown)}")
    with _tx(target) as s:
        job = Job(user=user, created_by=actor, created_at=now, updated_at=now, **fields)
        s.add(job)
        try:
            with s.begin_nested():
                s.flush()
        except DBIntegrityError:
            raise JobExists(user, fields.get("name")) from None
        log_event(s, user, actor, now, action="create", job=job.id, name=job.name)
        return job


def get_job(target: Target, job_id: int) -> Job:
    with _tx(target, write=False) as s:
        job = s.get(Job, job_id, populate_existing=True)
        if job is None:
            raise JobNotFound(job_id)
        return job


def list_jobs(target: Target, user: str | None = None) -> list[Job]:
    """Every job (or ``user``'s), by user then name."""
    with _tx(target, write=False) as s:
        q = select(Job).order_by(Job.user, Job.name)
        if user is not None:
            q = q.where(Job.user == user)
        return list(s.scalars(q))


def update_job(target: Target, job_id: int, actor: str, now: datetime, **fields: Any) -> Job:
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise TypeError(f"unknown job fields {sorted(unknown)}")
    with _tx(target) as s:
        job = s.get(Job, job_id, with_for_update=True, populate_existing=True)
        if job is None:
            raise JobNotFound(job_id)
        for name, value in fields.items():
            setattr(job, name, value)
        job.updated_at = now
        try:
            with s.begin_nested():
                s.flush()
        except DBIntegrityError:
            raise JobExists(job.user, fields.get("name")) from None
        log_event(s, job.user, actor, now, action="update", job=job.id, fields=sorted(fields))
        return job


def set_paused(
    target: Target, job_id: int | None, paused: bool, actor: str, now: datetime
) -> list[Job]:
    """Pause (or resume) one job, or every job when ``job_id`` is None. A resumed job's
    next time is recomputed by the caller (``update_job(next_run_at=…)``)."""
    with _tx(target) as s:
        q = select(Job).with_for_update()
        if job_id is not None:
            q = q.where(Job.id == job_id)
        jobs = list(s.scalars(q.execution_options(populate_existing=True)))
        if job_id is not None and not jobs:
            raise JobNotFound(job_id)
        for job in jobs:
            if job.paused != paused:
                job.paused = paused
                job.paused_by = actor if paused else None
                job.updated_at = now
                action = "pause" if paused else "resume"
                log_event(s, job.user, actor, now, action=action, job=job.id)
        return jobs


def delete_job(target: Target, job_id: int, actor: str, now: datetime) -> None:
    """Delete a job and its run history; ``JobBusy`` while a run is queued or running."""
    with _tx(target) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        busy = s.scalar(
            select(func.count(JobRun.id)).where(
                JobRun.job_id == job_id, JobRun.state.in_((QUEUED, RUNNING))
            )
        )
        if busy:
            raise JobBusy(job_id)
        log_event(s, job.user, actor, now, action="delete", job=job.id, name=job.name)
        s.execute(delete(JobRun).where(JobRun.job_id == job_id))
        s.delete(job)


# -- firing and claiming runs -------------------------------------------------------------


def _new_run(
    s: Session, job: Job, trigger: str, scheduled_for: datetime, now: datetime, **kw: Any
) -> JobRun:
    run = JobRun(
        job_id=job.id,
        user=job.user,
        trigger=trigger,
        scheduled_for=scheduled_for,
        attempt=kw.pop("attempt", 1),
        state=kw.pop("state", QUEUED),
        not_before=kw.pop("not_before", now),
        created_at=now,
        **kw,
    )
    s.add(run)
    s.flush()
    return run


def _in_progress(s: Session, job_id: int) -> bool:
    q = select(func.count(JobRun.id)).where(
        JobRun.job_id == job_id, JobRun.state.in_((QUEUED, RUNNING))
    )
    return bool(s.scalar(q))


def fire_due(
    target: Target,
    now: datetime,
    next_time: Callable[[Job, datetime], datetime | None],
    limit: int = 100,
) -> list[JobRun]:
    """Create a run for every unpaused job due at ``now`` and move its ``next_run_at`` on.

    Times missed while nothing ran (an outage) fire once, not once per missed time. A
    job whose previous run is still queued or running gets a ``skipped`` run instead.
    ``next_time(job, now)`` is the job's next time after ``now`` (None: never again).
    """
    with _tx(target) as s:
        q = (
            select(Job)
            .where(Job.paused.is_(False), Job.next_run_at.is_not(None), Job.next_run_at <= now)
            .order_by(Job.next_run_at, Job.id)
            .limit(limit)
        )
        if _pg(s):
            q = q.with_for_update(skip_locked=True)
        fired = []
        for job in s.scalars(q.execution_options(populate_existing=True)).all():
            due = job.next_run_at
            assert due is not None
            job.next_run_at = next_time(job, now)
            if _in_progress(s, job.id):
                reason = "skipped: the previous run was still going"
                run = _new_run(s, job, "schedule", due, now, state=SKIPPED, reason=reason)
                run.finished_at = now
            else:
                run = _new_run(s, job, "schedule", due, now)
            fired.append(run)
        return fired


def enqueue(target: Target, job_id: int, actor: str, now: datetime) -> JobRun:
    """A run of ``job_id`` now (``run now``), whatever its schedule or pause."""
    with _tx(target) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        if _in_progress(s, job_id):
            raise JobBusy(job_id)
        run = _new_run(s, job, "manual", now, now)
        log_event(s, job.user, actor, now, action="run-now", job=job.id, run=run.id)
        return run


def claim_runs(target: Target, worker: str, now: datetime, limit: int = 1) -> list[JobRun]:
    """Take up to ``limit`` queued runs whose time has come: ``queued → running`` for
    ``worker``, oldest first; disjoint between concurrent callers."""
    with _tx(target) as s:
        q = (
            select(JobRun)
            .where(JobRun.state == QUEUED, JobRun.not_before <= now)
            .order_by(JobRun.not_before, JobRun.id)
            .limit(limit)
        )
        if _pg(s):
            q = q.with_for_update(skip_locked=True)
        runs = list(s.scalars(q.execution_options(populate_existing=True)))
        for run in runs:
            run.state, run.claimed_by = RUNNING, worker
            run.heartbeat_at = run.started_at = now
        s.flush()
        return runs


def _held(s: Session, run_id: int, worker: str) -> JobRun:
    run = s.get(JobRun, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise RunNotFound(run_id)
    if run.state != RUNNING or run.claimed_by != worker:
        raise ClaimLost(run_id)
    return run


def heartbeat(target: Target, run_id: int, worker: str, now: datetime) -> bool:
    """Renew ``worker``'s hold on a running run; True if a cancel was asked for.
    ``ClaimLost`` if another process took it over (this one must stop)."""
    with _tx(target) as s:
        run = _held(s, run_id, worker)
        run.heartbeat_at = now
        return run.cancel_requested


def note_resources(target: Target, run_id: int, worker: str, **fields: Any) -> None:
    """Record what the run holds (``server_name``, ``server_started``, ``token_id``,
    ``lease_id``), so whoever cleans up after a crash knows what to stop."""
    allowed = {"server_name", "server_started", "token_id", "lease_id"}
    if set(fields) - allowed:
        raise TypeError(f"unknown run fields {sorted(set(fields) - allowed)}")
    with _tx(target) as s:
        run = _held(s, run_id, worker)
        for name, value in fields.items():
            setattr(run, name, value)


def _retry(s: Session, run: JobRun, now: datetime) -> JobRun | None:
    job = s.get(Job, run.job_id)
    if job is None or run.attempt > job.retries:
        return None
    delay = timedelta(seconds=job.retry_delay * (2 ** (run.attempt - 1)))
    return _new_run(
        s, job, "retry", run.scheduled_for, now, attempt=run.attempt + 1, not_before=now + delay
    )


def finish_run(
    target: Target,
    run_id: int,
    worker: str | None,
    state: str,
    now: datetime,
    *,
    reason: str | None = None,
    detail: str | None = None,
    output_path: str | None = None,
    retry: bool = True,
) -> tuple[JobRun, JobRun | None]:
    """End a run (``worker`` must hold it; None: whoever does) and, if it failed and the
    job has attempts left, queue the next attempt after its back-off. Returns both."""
    if state not in FINISHED:
        raise ValueError(f"{state!r} is not a final state")
    with _tx(target) as s:
        if worker is None:
            run = s.get(JobRun, run_id, with_for_update=True, populate_existing=True)
            if run is None:
                raise RunNotFound(run_id)
        else:
            run = _held(s, run_id, worker)
        run.state, run.finished_at = state, now
        run.reason, run.detail = reason, detail
        if output_path is not None:
            run.output_path = output_path
        nxt = _retry(s, run, now) if state == FAILED and retry else None
        log_event(
            s, run.user, worker or "hometier", now, action=state, job=run.job_id, run=run.id,
            attempt=run.attempt, reason=reason, retry=nxt.id if nxt else None,
        )  # fmt: skip
        return run, nxt


def take_stale(target: Target, now: datetime, stale_after: timedelta) -> list[JobRun]:
    """Runs left ``running`` by a process that stopped renewing them, marked ``failed``
    (with their next attempt queued where the job allows). The caller then stops what
    they held (server, token, lease); the returned rows still name them."""
    with _tx(target) as s:
        q = select(JobRun).where(JobRun.state == RUNNING, JobRun.heartbeat_at < now - stale_after)
        if _pg(s):
            q = q.with_for_update(skip_locked=True)
        taken = []
        for run in s.scalars(q.execution_options(populate_existing=True)).all():
            run.state, run.finished_at = FAILED, now
            run.reason = "interrupted: the hometier process running it stopped"
            nxt = _retry(s, run, now)
            log_event(
                s, run.user, "hometier", now, action="interrupted", job=run.job_id, run=run.id,
                worker=run.claimed_by, retry=nxt.id if nxt else None,
            )  # fmt: skip
            taken.append(run)
        return taken


def request_cancel(target: Target, run_id: int, actor: str, now: datetime) -> JobRun:
    """Cancel a queued run at once; ask a running one's process to stop it."""
    with _tx(target) as s:
        run = s.get(JobRun, run_id, with_for_update=True, populate_existing=True)
        if run is None:
            raise RunNotFound(run_id)
        if run.state == QUEUED:
            run.state, run.finished_at, run.reason = CANCELLED, now, f"cancelled by {actor}"
        elif run.state == RUNNING:
            run.cancel_requested = True
        log_event(s, run.user, actor, now, action="cancel", job=run.job_id, run=run.id)
        return run


def get_run(target: Target, run_id: int) -> JobRun:
    with _tx(target, write=False) as s:
        run = s.get(JobRun, run_id, populate_existing=True)
        if run is None:
            raise RunNotFound(run_id)
        return run


def list_runs(target: Target, job_id: int, limit: int = 50) -> list[JobRun]:
    """The newest ``limit`` runs of a job, newest first."""
    with _tx(target, write=False) as s:
        q = select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id.desc()).limit(limit)
        return list(s.scalars(q))


def active_runs(target: Target, worker: str | None = None) -> list[JobRun]:
    with _tx(target, write=False) as s:
        q = select(JobRun).where(JobRun.state == RUNNING)
        if worker is not None:
            q = q.where(JobRun.claimed_by == worker)
        return list(s.scalars(q))


# -- secrets ------------------------------------------------------------------------------


def set_secret(
    target: Target, user: str, name: str, sealed: str, actor: str, now: datetime
) -> None:
    """Store (or replace) ``user``'s sealed secret ``name``."""
    with _tx(target) as s:
        row = s.scalars(
            select(JobSecret).where(JobSecret.user == user, JobSecret.name == name)
        ).one_or_none()
        if row is None:
            s.add(JobSecret(user=user, name=name, sealed=sealed, created_at=now, updated_at=now))
        else:
            row.sealed, row.updated_at = sealed, now
        log_event(s, user, actor, now, action="secret-set", secret=name)


def delete_secret(target: Target, user: str, name: str, actor: str, now: datetime) -> None:
    with _tx(target) as s:
        result: Any = s.execute(
            delete(JobSecret).where(JobSecret.user == user, JobSecret.name == name)
        )
        gone = result.rowcount
        if not gone:
            raise SecretNotFound(user, name)
        log_event(s, user, actor, now, action="secret-delete", secret=name)


def secret_names(target: Target, user: str) -> list[dict[str, Any]]:
    """Names and times of ``user``'s secrets (never their values)."""
    with _tx(target, write=False) as s:
        q = select(JobSecret.name, JobSecret.updated_at).where(JobSecret.user == user)
        return [{"name": n, "updated_at": t} for n, t in s.execute(q.order_by(JobSecret.name))]


def sealed_secrets(target: Target, user: str, names: list[str]) -> dict[str, str]:
    """``{name: sealed}`` for the named secrets of ``user``; ``SecretNotFound`` for the
    first one missing."""
    with _tx(target, write=False) as s:
        q = select(JobSecret.name, JobSecret.sealed).where(
            JobSecret.user == user, JobSecret.name.in_(names)
        )
        found = {name: sealed for name, sealed in s.execute(q)}
    for name in names:
        if name not in found:
            raise SecretNotFound(user, name)
    return found


def reseal_all(target: Target, reseal: Callable[[str], str], now: datetime) -> int:
    """Seal every secret again (``Sealer.rotate``) after a new key was put first."""
    with _tx(target) as s:
        rows = list(s.scalars(select(JobSecret).with_for_update()))
        for row in rows:
            row.sealed, row.updated_at = reseal(row.sealed), now
        return len(rows)


__all__ = [
    "CANCELLED",
    "FAILED",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "RUN_STATES",
    "SKIPPED",
    "SUCCEEDED",
    "ClaimLost",
    "Job",
    "JobBusy",
    "JobExists",
    "JobNotFound",
    "JobRun",
    "JobSecret",
    "RunNotFound",
    "SecretNotFound",
]
