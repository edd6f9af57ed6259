"""The dashboard's Jobs page: a user's jobs, their runs and secrets; every job for admins.

``GET /jobs`` lists the caller's jobs (``?user=U`` for someone else's, with the right;
admins see every job) with their last runs, a form to add a job and the names of the
caller's secrets. ``POST /jobs`` carries one action (create, run, pause, resume, delete,
pause-all, resume-all, secret-set, secret-delete) through the same checks as the API,
then sends the browser back with a one-line message.
"""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from hometier.errors import Error, UsageError
from hometier.jobs import spec
from hometier.service.api.jobs import JobsDisabled, check_source, may_manage, row_id
from hometier.service.auth import Forbidden, Identity
from hometier.service.dashboard.base import FormRefused, PageHandler
from hometier.service.outages import stand_in
from hometier.state import jobs as jq

ACTIONS = (
    "create", "run", "pause", "resume", "delete", "pause-all", "resume-all",
    "secret-set", "secret-delete",
)  # fmt: skip


class JobsPage(PageHandler):
    @web.authenticated  # a browser without a session goes to the Hub's login, and back
    async def get(self) -> None:
        who = self.identity()
        self.take_flash()
        user = self.get_query_argument("user", None)
        if user is not None:
            user = self.user_arg(user)
            if not may_manage(who, user):
                raise Forbidden(who.name, "see the jobs of", user)
        elif not who.is_admin:
            user = who.name
        lc = self.ctx.lc

        def load() -> dict[str, Any]:
            jobs = jq.list_jobs(lc.db, user)
            runs = {j.id: jq.list_runs(lc.db, j.id, 5) for j in jobs}
            owner = user or who.name
            secrets = jq.secret_names(lc.db, owner) if may_manage(who, owner) else []
            return {"jobs": jobs, "runs": runs, "secrets": secrets, "owner": owner}

        data = await self.blocking(load)
        self.render(
            "jobs.html",
            admin=who.is_admin,
            enabled=self.ctx.jobs is not None,
            can_seal=self.ctx.jobs is not None and self.ctx.jobs.sealer is not None,
            user=user,
            **data,
        )

    async def post(self) -> None:
        if not self.current_user:
            raise FormRefused()
        self.check_xsrf_cookie()
        who = self.identity()
        action = self.get_body_argument("action", "")
        owner = self.user_arg(self.get_body_argument("user", "") or who.name)
        try:
            if action not in ACTIONS:
                raise UsageError(f"unknown action {action[:40]!r}")
            text = await self.blocking(getattr(self, "_" + action.replace("-", "_")), who, owner)
            kind = "ok"
        except Error as exc:
            public = stand_in(exc)
            if public is not None:
                self.log_exception(type(public), public, None)
            kind, text = "error", (public or exc).get_message()
        self.set_flash(kind, text)
        query = {"user": owner} if owner != who.name else {}
        self.redirect(self.url("jobs", **query), status=303)

    # -- actions (run in a worker thread) ---------------------------------------------

    def _ctx(self) -> Any:
        if self.ctx.jobs is None:
            raise JobsDisabled()
        return self.ctx.jobs

    def _job(self, who: Identity) -> jq.Job:
        jid = row_id(self.get_body_argument("job", ""))
        if jid is None:
            raise UsageError("no job given")
        job = jq.get_job(self.ctx.lc.db, jid)
        if not may_manage(who, job.user):
            raise jq.JobNotFound(job.id)
        return job

    def _create(self, who: Identity, owner: str) -> str:
        if not may_manage(who, owner):
            raise Forbidden(who.name, "add jobs for", owner)
        arg = self.get_body_argument
        doc: dict[str, Any] = {
            "name": arg("name", ""),
            "path": arg("path", ""),
            "schedule": arg("schedule", ""),
            "timezone": arg("timezone", "") or "UTC",
            "timeout": arg("timeout", "") or "1h",
            "retries": int(arg("retries", "0") or 0),
            "keep": int(arg("keep", "5") or 5),
            "server": arg("server", ""),
        }
        if arg("run_at", ""):
            doc["run_at"] = arg("run_at")
        try:
            doc["parameters"] = json.loads(arg("parameters", "") or "{}")
        except ValueError:
            raise UsageError("parameters must be a JSON object") from None
        doc["secrets"] = [s.strip() for s in arg("secrets", "").split(",") if s.strip()]
        lc, ctx = self.ctx.lc, self._ctx()
        now = lc.now()
        fields = spec.check_spec(doc, ctx, now)
        if fields.get("secrets"):
            jq.sealed_secrets(lc.db, owner, fields["secrets"])
        check_source(lc, ctx, owner, fields["path"])
        fields["next_run_at"] = spec.first_time(fields, now)
        job = jq.create_job(lc.db, owner, f"dashboard:{who.name}", now, **fields)
        return f"Job {job.name!r} added; next run {job.next_run_at or 'not scheduled'}."

    def _run(self, who: Identity, owner: str) -> str:
        self._ctx()
        job = self._job(who)
        run = jq.enqueue(self.ctx.lc.db, job.id, f"dashboard:{who.name}", self.ctx.lc.now())
        if self.ctx.scheduler is not None:
            self.ctx.scheduler.wake()
        return f"Run {run.id} of {job.name!r} queued."

    def _pause(self, who: Identity, owner: str) -> str:
        job = self._job(who)
        jq.set_paused(self.ctx.lc.db, job.id, True, f"dashboard:{who.name}", self.ctx.lc.now())
        return f"Job {job.name!r} paused."

    def _resume(self, who: Identity, owner: str) -> str:
        job = self._job(who)
        lc = self.ctx.lc
        jq.set_paused(lc.db, job.id, False, f"dashboard:{who.name}", lc.now())
        nxt = spec.resume_time(job, lc.now())
        jq.update_job(lc.db, job.id, f"dashboard:{who.name}", lc.now(), next_run_at=nxt)
        return f"Job {job.name!r} resumed."

    def _delete(self, who: Identity, owner: str) -> str:
        job = self._job(who)
        jq.delete_job(self.ctx.lc.db, job.id, f"dashboard:{who.name}", self.ctx.lc.now())
        return f"Job {job.name!r} deleted."

    def _pause_all(self, who: Identity, owner: str, paused: bool = True) -> str:
        if not who.is_admin:
            raise Forbidden(who.name, "pause", "every user")
        jobs = jq.set_paused(
            self.ctx.lc.db, None, paused, f"dashboard:{who.name}", self.ctx.lc.now()
        )
        return f"{len(jobs)} job(s) {'paused' if paused else 'resumed'}."

    def _resume_all(self, who: Identity, owner: str) -> str:
        text = self._pause_all(who, owner, paused=False)
        lc = self.ctx.lc
        for job in jq.list_jobs(lc.db):
            nxt = spec.resume_time(job, lc.now())
            jq.update_job(lc.db, job.id, f"dashboard:{who.name}", lc.now(), next_run_at=nxt)
        return text

    def _secret_set(self, who: Identity, owner: str) -> str:
        from hometier.jobs.notebook import check_secret_name

        if not may_manage(who, owner):
            raise Forbidden(who.name, "store secrets for", owner)
        sealer = self._ctx().sealer
        if sealer is None:
            raise UsageError("no secret key is configured: secrets cannot be stored")
        name = check_secret_name(self.get_body_argument("name", ""))
        value = self.get_body_argument("value", "")
        if not value or len(value) > 64 * 1024:
            raise UsageError("a secret's value must be 1 to 65536 characters")
        lc = self.ctx.lc
        jq.set_secret(
            lc.db, owner, name, sealer.seal(value.encode()), f"dashboard:{who.name}", lc.now()
        )
        return f"Secret {name} stored (sealed)."

    def _secret_delete(self, who: Identity, owner: str) -> str:
        if not may_manage(who, owner):
            raise Forbidden(who.name, "delete secrets of", owner)
        name = self.get_body_argument("name", "")
        jq.delete_secret(self.ctx.lc.db, owner, name, f"dashboard:{who.name}", self.ctx.lc.now())
        return f"Secret {name} deleted."


def routes(p: str) -> list[tuple[str, Any]]:
    return [(rf"{p}/jobs", JobsPage)]
