"""Jobs, their runs and their owners' secrets, over the REST API.

A user manages their own jobs and secrets with plain access to the service; a token with
``custom:hometier:jobs!user=U`` manages U's; ``custom:hometier:admin`` sees and pauses
every job. A secret's value goes in once (``PUT``) and never comes out: every answer
names secrets, none shows one.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.services.auth import check_scopes

from hometier.errors import Error, UsageError
from hometier.jobs import files, spec
from hometier.jobs.notebook import check_secret_name
from hometier.scopes import JOBS as JOBS_SCOPE
from hometier.service.api.base import BaseHandler
from hometier.service.auth import Forbidden, Identity
from hometier.state import jobs as jq
from hometier.state import queries

MAX_SECRET = 64 * 1024


class JobsDisabled(Error):
    """Jobs are not enabled on this hometier (c.Jobs.enabled, and the Hub API URL and
    token, must be set)."""

    exit_code = 2
    http_status = 503


MAX_ID = 2**31 - 1


def row_id(text: str) -> int | None:
    """A database id from a URL (None for anything a row cannot have as its id)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def may_manage(who: Identity, user: str) -> bool:
    """True if ``who`` may see and change ``user``'s jobs and secrets."""
    if who.is_admin:
        return True
    if check_scopes({f"{JOBS_SCOPE}!user={user}"}, who.scopes):
        return True
    access = f"access:services!service={who.service_name}"
    return who.kind == "user" and who.name == user and bool(check_scopes({access}, who.scopes))


def job_doc(job: jq.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "user": job.user,
        "name": job.name,
        "path": job.path,
        "kind": job.kind,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "run_at": job.run_at,
        "parameters": job.parameters,
        "secrets": job.secrets,
        "timeout": job.timeout,
        "retries": job.retries,
        "retry_delay": job.retry_delay,
        "server": job.server,
        "profile": job.profile,
        "keep": job.keep,
        "paused": job.paused,
        "paused_by": job.paused_by,
        "next_run_at": job.next_run_at,
        "created_by": job.created_by,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def run_doc(run: jq.JobRun, admin: bool = False) -> dict[str, Any]:
    doc = {
        "id": run.id,
        "job_id": run.job_id,
        "user": run.user,
        "trigger": run.trigger,
        "scheduled_for": run.scheduled_for,
        "attempt": run.attempt,
        "state": run.state,
        "not_before": run.not_before,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "reason": run.reason,
        "output_path": run.output_path,
        "server": run.server_name,
        "cancel_requested": run.cancel_requested,
    }
    if admin:
        doc.update(detail=run.detail, claimed_by=run.claimed_by, heartbeat_at=run.heartbeat_at)
    return doc


class JobsBase(BaseHandler):
    @property
    def jobs(self) -> Any:
        ctx = self.ctx.jobs
        if ctx is None:
            raise JobsDisabled()
        return ctx

    def allowed(self, user: str) -> Identity:
        who = self.identity()
        if not may_manage(who, user):
            raise Forbidden(who.name or "this token", "manage the jobs of", user)
        return who

    async def job(self, job_id: str) -> tuple[jq.Job, Identity]:
        who = self.identity()  # before any lookup: strangers learn nothing
        jid = row_id(job_id)
        if jid is None:
            raise jq.JobNotFound(job_id[:20])
        job = await self.blocking(jq.get_job, self.ctx.lc.db, jid)
        if not may_manage(who, job.user):
            raise jq.JobNotFound(jid)  # another user's job does not exist for this caller
        return job, who

    def wake(self) -> None:
        if getattr(self.ctx, "scheduler", None) is not None:
            self.ctx.scheduler.wake()

    def check_source(self, user: str, path: str) -> None:
        check_source(self.ctx.lc, self.jobs, user, path)


def check_source(lc: Any, jobs: Any, user: str, path: str) -> None:
    """Refuse at once a path that leaves the home or is not there (if the home is on the
    volume; an archived home is checked when the run restores it)."""
    try:
        if queries.get_home(lc.db, user).is_cold:
            return
    except queries.HomeNotFound:
        pass
    home = lc.layout.path(user)
    if not home.is_dir() and not home.is_symlink():
        return
    files.run_as_owner(home, files.check_source, path, user, jobs.max_source)


class JobsHandler(JobsBase):
    async def get(self) -> None:
        who = self.identity()
        user = self.get_query_argument("user", None)
        if user is None and not who.is_admin:
            user = who.name
        if user is not None:
            user = self.user_arg(user)
            self.allowed(user)
        jobs = await self.blocking(jq.list_jobs, self.ctx.lc.db, user)
        self.send({"jobs": [job_doc(j) for j in jobs]})

    async def post(self) -> None:
        doc = self.body()
        who = self.identity()
        user = self.user_arg(str(doc.pop("user", None) or who.name))
        self.allowed(user)
        lc, ctx = self.ctx.lc, self.jobs
        now = lc.now()
        paused = bool(doc.pop("paused", False))
        fields = spec.check_spec(doc, ctx, now)
        if fields.get("secrets"):
            await self.blocking(jq.sealed_secrets, lc.db, user, fields["secrets"])
        await self.blocking(self.check_source, user, fields["path"])
        fields["next_run_at"] = spec.first_time(fields, now)
        job = await self.blocking(jq.create_job, lc.db, user, f"api:{who.name}", now, **fields)
        if paused:
            [job] = await self.blocking(jq.set_paused, lc.db, job.id, True, f"api:{who.name}", now)
        self.send(job_doc(job), status=201)


class JobHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        job, who = await self.job(job_id)
        runs = await self.blocking(jq.list_runs, self.ctx.lc.db, job.id, 10)
        out = job_doc(job)
        out["runs"] = [run_doc(r, who.is_admin) for r in runs]
        self.send(out)

    async def patch(self, job_id: str) -> None:
        job, who = await self.job(job_id)
        doc = self.body()
        if "user" in doc and doc["user"] != job.user:
            raise UsageError("a job cannot change owner")
        doc.pop("user", None)
        doc.pop("paused", None)
        lc, ctx = self.ctx.lc, self.jobs
        now = lc.now()
        merged = {"timezone": job.timezone, **doc}
        if "timezone" in doc and "schedule" not in doc:
            merged["schedule"] = job.schedule
        fields = spec.check_spec(merged, ctx, now, partial=True)
        if fields.get("secrets"):
            await self.blocking(jq.sealed_secrets, lc.db, job.user, fields["secrets"])
        if "path" in fields:
            await self.blocking(self.check_source, job.user, fields["path"])
        if {"schedule", "timezone", "run_at"} & set(doc):
            sched = {
                "schedule": fields.get("schedule", job.schedule),
                "timezone": fields.get("timezone", job.timezone),
                "run_at": fields.get("run_at", job.run_at),
            }
            fields["next_run_at"] = spec.first_time(sched, now)
        job = await self.blocking(jq.update_job, lc.db, job.id, f"api:{who.name}", now, **fields)
        self.send(job_doc(job))

    async def delete(self, job_id: str) -> None:
        job, who = await self.job(job_id)
        lc = self.ctx.lc
        await self.blocking(jq.delete_job, lc.db, job.id, f"api:{who.name}", lc.now())
        self.send({"id": job.id, "deleted": True})


class JobActionHandler(JobsBase):
    async def post(self, job_id: str, action: str) -> None:
        job, who = await self.job(job_id)
        lc = self.ctx.lc
        now, actor = lc.now(), f"api:{who.name}"
        if action == "run":
            self.jobs  # noqa: B018 - refuse when jobs are disabled
            run = await self.blocking(jq.enqueue, lc.db, job.id, actor, now)
            self.wake()
            self.send(run_doc(run, who.is_admin), status=202)
            return
        paused = action == "pause"
        [job] = await self.blocking(jq.set_paused, lc.db, job.id, paused, actor, now)
        if not paused:
            nxt = spec.resume_time(job, now)
            job = await self.blocking(jq.update_job, lc.db, job.id, actor, now, next_run_at=nxt)
        self.send(job_doc(job))


class PauseAllHandler(JobsBase):
    async def post(self) -> None:
        who = self.identity()
        if not who.is_admin:
            raise Forbidden(who.name or "this token", "pause", "every user")
        paused = self.body().get("paused", True)
        if not isinstance(paused, bool):
            raise UsageError("paused must be true or false")
        lc = self.ctx.lc
        jobs = await self.blocking(jq.set_paused, lc.db, None, paused, f"api:{who.name}", lc.now())
        self.send({"paused": paused, "jobs": len(jobs)})


class RunsHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        job, who = await self.job(job_id)
        try:
            limit = min(500, max(1, int(self.get_query_argument("limit", "50"))))
        except ValueError:
            raise UsageError("limit must be a number") from None
        runs = await self.blocking(jq.list_runs, self.ctx.lc.db, job.id, limit)
        self.send({"runs": [run_doc(r, who.is_admin) for r in runs]})


class RunHandler(JobsBase):
    async def _run(self, job_id: str, run_id: str) -> tuple[jq.JobRun, Identity]:
        job, who = await self.job(job_id)
        rid = row_id(run_id)
        if rid is None:
            raise jq.RunNotFound(run_id[:20])
        run = await self.blocking(jq.get_run, self.ctx.lc.db, rid)
        if run.job_id != job.id:
            raise jq.RunNotFound(run.id)
        return run, who

    async def get(self, job_id: str, run_id: str) -> None:
        run, who = await self._run(job_id, run_id)
        self.send(run_doc(run, who.is_admin))


class CancelHandler(RunHandler):
    async def post(self, job_id: str, run_id: str) -> None:
        run, who = await self._run(job_id, run_id)
        lc = self.ctx.lc
        run = await self.blocking(jq.request_cancel, lc.db, run.id, f"api:{who.name}", lc.now())
        self.send(run_doc(run, who.is_admin), status=202)


class SecretsBase(JobsBase):
    def _user(self) -> str:
        who = self.identity()
        user = self.user_arg(self.get_query_argument("user", None) or who.name)
        self.allowed(user)
        return user


class SecretsHandler(SecretsBase):
    async def get(self) -> None:
        user = self._user()
        names = await self.blocking(jq.secret_names, self.ctx.lc.db, user)
        self.send({"user": user, "secrets": names})


class SecretHandler(SecretsBase):
    async def put(self, name: str) -> None:
        user = self._user()
        name = check_secret_name(name)
        sealer = self.jobs.sealer
        if sealer is None:
            raise UsageError(
                "no secret key is configured (c.Hometier.secret_key): secrets cannot be stored"
            )
        value = self.body().get("value")
        if not isinstance(value, str) or not value or len(value) > MAX_SECRET:
            raise UsageError(f"value must be a non-empty string of at most {MAX_SECRET} characters")
        sealed = sealer.seal(value.encode())
        lc = self.ctx.lc
        actor = f"api:{self.identity().name}"
        await self.blocking(jq.set_secret, lc.db, user, name, sealed, actor, lc.now())
        self.send({"user": user, "name": name, "stored": True})

    async def delete(self, name: str) -> None:
        user = self._user()
        name = check_secret_name(name)
        lc = self.ctx.lc
        actor = f"api:{self.identity().name}"
        await self.blocking(jq.delete_secret, lc.db, user, name, actor, lc.now())
        self.send({"user": user, "name": name, "deleted": True})


def job_routes(p: str) -> list[tuple[str, Any]]:
    job = r"(?P<job_id>[^/]+)"
    return [
        (rf"{p}/api/jobs", JobsHandler),
        (rf"{p}/api/jobs/pause-all", PauseAllHandler),
        (rf"{p}/api/jobs/{job}", JobHandler),
        (rf"{p}/api/jobs/{job}/(?P<action>run|pause|resume)", JobActionHandler),
        (rf"{p}/api/jobs/{job}/runs", RunsHandler),
        (rf"{p}/api/jobs/{job}/runs/(?P<run_id>[^/]+)", RunHandler),
        (rf"{p}/api/jobs/{job}/runs/(?P<run_id>[^/]+)/cancel", CancelHandler),
        (rf"{p}/api/secrets", SecretsHandler),
        (rf"{p}/api/secrets/(?P<name>[^/]+)", SecretHandler),
    ]


def openapi_paths(op: Any) -> dict[str, Any]:
    """The jobs part of the OpenAPI description; ``op`` is ``openapi._op``."""
    own = (
        "the job's own user (access to the service), or custom:hometier:jobs for that "
        "user, or custom:hometier:admin"
    )
    job = {"name": "job", "in": "path", "required": True, "schema": {"type": "integer"}}
    run = {"name": "run", "in": "path", "required": True, "schema": {"type": "integer"}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    user = {"name": "user", "in": "query", "schema": {"type": "string"}}
    text = {"type": "string"}
    body = {
        "type": "object",
        "properties": {
            "user": text,
            "name": text,
            "path": {"type": "string", "examples": ["reports/daily.ipynb"]},
            "schedule": {"type": "string", "examples": ["30 2 * * *", "@daily"]},
            "timezone": {"type": "string", "examples": ["Europe/Paris"]},
            "run_at": {"type": ["string", "null"], "format": "date-time"},
            "parameters": {"type": "object"},
            "secrets": {"type": "array", "items": text},
            "timeout": {"oneOf": [text, {"type": "integer"}]},
            "retries": {"type": "integer"},
            "retry_delay": {"oneOf": [text, {"type": "integer"}]},
            "server": text,
            "profile": {"type": "object"},
            "keep": {"type": "integer"},
            "paused": {"type": "boolean"},
        },
    }
    return {
        "/api/jobs": {
            "get": op("List jobs (yours; an admin's: every job)", own, [user]),
            "post": op("Define a job", own, [], body, ok="201"),
        },
        "/api/jobs/pause-all": {
            "post": op(
                "Pause (or resume) every job",
                "custom:hometier:admin",
                [],
                {"type": "object", "properties": {"paused": {"type": "boolean"}}},
            )
        },
        "/api/jobs/{job}": {
            "get": op("A job and its latest runs", own, [job]),
            "patch": op("Change a job", own, [job], body),
            "delete": op("Delete a job and its runs", own, [job]),
        },
        "/api/jobs/{job}/run": {"post": op("Run now", own, [job], ok="202")},
        "/api/jobs/{job}/pause": {"post": op("Pause a job", own, [job])},
        "/api/jobs/{job}/resume": {"post": op("Resume a job", own, [job])},
        "/api/jobs/{job}/runs": {
            "get": op(
                "A job's runs, newest first",
                own,
                [job, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            )
        },
        "/api/jobs/{job}/runs/{run}": {"get": op("One run", own, [job, run])},
        "/api/jobs/{job}/runs/{run}/cancel": {
            "post": op("Cancel a queued or running run", own, [job, run], ok="202")
        },
        "/api/secrets": {"get": op("The names of a user's secrets (never values)", own, [user])},
        "/api/secrets/{name}": {
            "put": op(
                "Store a secret (sealed; never shown again)",
                own,
                [name, user],
                {"type": "object", "properties": {"value": text}, "required": ["value"]},
            ),
            "delete": op("Delete a secret", own, [name, user]),
        },
    }
