"""Validating a job definition (from the API, the dashboard or the command line).

``check_spec(doc, …)`` turns a JSON object into the fields of a ``Job`` row, or raises
one ``UsageError`` that says what is wrong. Nothing is trusted: the path must stay in the
home, the schedule must be a real cron expression that does not fire in bursts, the
time zone must exist, parameters must be Python names with JSON values, the server name
must be one JupyterHub accepts, and numbers must be within the operator's limits.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from hometier.errors import UsageError
from hometier.jobs import files, notebook, schedule
from hometier.jobs.context import JobsContext
from hometier.lifecycle.units import parse_duration

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
_SERVER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_PROFILE_JSON = 16 * 1024
KEYS = frozenset(
    {"name", "path", "schedule", "timezone", "run_at", "parameters", "secrets", "timeout"}
    | {"retries", "retry_delay", "server", "profile", "keep", "paused", "user"}
)


def _seconds(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UsageError(f"{what} must be a number of seconds or a duration like '2h'")
    try:
        s = int(parse_duration(value).total_seconds())
    except (UsageError, ValueError):
        raise UsageError(f"{what} must be a number of seconds or a duration like '2h'") from None
    if not low <= s <= high:
        raise UsageError(f"{what} must be between {low} and {high} seconds")
    return s


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number from {low} to {high}")
    return value


def check_spec(
    doc: dict[str, Any], ctx: JobsContext, now: dt.datetime, *, partial: bool = False
) -> dict[str, Any]:
    """The ``Job`` fields ``doc`` asks for (``partial``: only those present, for an
    update; the schedule's next time is recomputed whenever it could change)."""
    unknown = set(doc) - KEYS
    if unknown:
        raise UsageError(f"unknown job fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if not partial:
        for key in ("name", "path"):
            if key not in doc:
                raise UsageError(f"a job needs a {key}")
        if not doc.get("schedule") and not doc.get("run_at"):
            raise UsageError("a job needs a schedule (cron) or a run_at time (once)")
    if "name" in doc:
        name = doc["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError("a job's name is 1-100 letters, digits, spaces, '.', '_' or '-'")
        out["name"] = name
    if "path" in doc:
        out["path"] = "/".join(files.check_relpath(doc["path"]))
        out["kind"] = files.kind_of(out["path"])
    if "timezone" in doc or not partial:
        tz = doc.get("timezone") or "UTC"
        schedule.timezone(tz if isinstance(tz, str) else "")
        out["timezone"] = tz
    if "schedule" in doc:
        expr = doc["schedule"] or ""
        out["schedule"] = (
            schedule.check(expr, doc.get("timezone") or "UTC", now, ctx.min_interval)
            if expr
            else ""
        )
    if "run_at" in doc:
        out["run_at"] = _time(doc["run_at"])
    if "parameters" in doc:
        out["parameters"] = notebook.check_parameters(doc["parameters"])
    if "secrets" in doc:
        names = doc["secrets"] or []
        if not isinstance(names, list) or len(names) > 50:
            raise UsageError("secrets must be a list of at most 50 secret names")
        out["secrets"] = sorted({notebook.check_secret_name(n) for n in names})
        if out["secrets"] and ctx.sealer is None:
            raise UsageError("this hometier has no secret key configured: jobs cannot use secrets")
    if "timeout" in doc or not partial:
        out["timeout"] = _seconds(doc.get("timeout", 3600), "timeout", 10, ctx.max_timeout)
    if "retries" in doc:
        out["retries"] = _int(doc["retries"], "retries", 0, ctx.max_retries)
    if "retry_delay" in doc:
        out["retry_delay"] = _seconds(doc["retry_delay"], "retry_delay", 0, 86400)
    if "server" in doc:
        server = doc["server"] or ""
        if not isinstance(server, str) or (server and not _SERVER.match(server)):
            raise UsageError(
                "server is '' (reuse the running server, else start one), 'new', or a "
                "named server's name (lower-case letters, digits, '.', '_', '-')"
            )
        out["server"] = server
    if "profile" in doc:
        profile = doc["profile"] or {}
        if not isinstance(profile, dict) or len(json.dumps(profile)) > MAX_PROFILE_JSON:
            raise UsageError(
                "profile must be an object (the spawner's user_options), at most 16 KiB"
            )
        out["profile"] = profile
    if "keep" in doc:
        out["keep"] = _int(doc["keep"], "keep", 1, ctx.max_keep)
    return out


def _time(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UsageError(
            "run_at must be an ISO 8601 time with its offset, e.g. 2030-01-31T02:00+01:00"
        )
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"run_at {value[:40]!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise UsageError("run_at needs its UTC offset (e.g. 2030-01-31T02:00+01:00 or …Z)")
    return t.astimezone(dt.UTC)


def next_time(job: Any, now: dt.datetime) -> dt.datetime | None:
    """When ``job`` fires next after ``now``: its cron's next time, or its ``run_at`` if
    that is still to come (a one-off fires once)."""
    if job.schedule:
        return schedule.next_after(job.schedule, job.timezone, now)
    return None


def first_time(fields: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
    """The first ``next_run_at`` of a new (or rescheduled) job."""
    if fields.get("schedule"):
        return schedule.next_after(fields["schedule"], fields.get("timezone") or "UTC", now)
    run_at = fields.get("run_at")
    return run_at if run_at is not None else None


def resume_time(job: Any, now: dt.datetime) -> dt.datetime | None:
    """When a resumed job fires next: its cron's next time from now (times missed while
    paused do not fire), or its one-off time if that is still to come."""
    if job.schedule:
        return schedule.next_after(job.schedule, job.timezone, now)
    return job.run_at if job.run_at is not None and job.run_at > now else None
