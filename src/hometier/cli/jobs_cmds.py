"""``hometier jobs …``: users' scheduled notebooks and scripts, from the command line.

Works on the state database directly (as ``lease`` and ``exempt`` do), so an operator
can list, pause, run or remove any job; the runs themselves are carried out by the
scheduler inside ``hometier serve``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from hometier.cli.output import emit_json, err, out
from hometier.config import Hometier
from hometier.errors import UsageError
from hometier.lifecycle.homes import check_username


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="scheduled notebooks and scripts of users")
    verbs = p.add_subparsers(dest="jobs_verb", metavar="ACTION", required=True)

    v = verbs.add_parser("list", help="every job, or one user's")
    v.add_argument(
        "user", nargs="?", help="only this user's jobs (default: every job; admins only)"
    )
    v.set_defaults(handler=cmd_list)

    v = verbs.add_parser("add", help="add a job to a user")
    v.add_argument("user", help="whose job: it runs as this JupyterHub user, in their home")
    v.add_argument("name", help="the job's name (unique per user)")
    v.add_argument("path", help="notebook or script, relative to the home")
    v.add_argument("--schedule", default="", help="cron, e.g. '30 2 * * *' or @daily")
    v.add_argument(
        "--timezone",
        default="UTC",
        help="time zone of --schedule (an IANA name, e.g. Europe/Paris)",
    )
    v.add_argument("--at", dest="run_at", help="run once at this ISO time instead")
    v.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a parameter for the notebook's parameters cell, its value in JSON; repeat for more",
    )
    v.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME",
        help="a stored secret the run puts in the kernel's environment; repeat for more",
    )
    v.add_argument(
        "--timeout", default="1h", help="stop a run after this long (90s, 30m, 2h; default 1h)"
    )
    v.add_argument(
        "--retries", type=int, default=0, help="times a failed run is tried again (default 0)"
    )
    v.add_argument(
        "--keep", type=int, default=5, help="executed copies kept next to the source (default 5)"
    )
    v.add_argument("--server", default="", help="'' (reuse or start), 'new', or a name")
    v.set_defaults(handler=cmd_add)

    for name, text in (
        ("run", "queue a run now"),
        ("pause", "pause a job (no scheduled runs)"),
        ("resume", "resume a paused job"),
        ("delete", "delete a job and its run history"),
        ("runs", "a job's latest runs"),
    ):
        v = verbs.add_parser(name, help=text)
        v.add_argument("job", type=int, help="the job's id (hometier jobs list)")
        v.set_defaults(handler=cmd_job)

    v = verbs.add_parser("pause-all", help="pause every job (--resume: resume them)")
    v.add_argument("--resume", action="store_true", help="let every job run again")
    v.set_defaults(handler=cmd_pause_all)

    v = verbs.add_parser("events", help="the jobs lines of the event log of a user")
    v.add_argument("user", help="whose jobs' events")
    v.add_argument("--limit", type=int, default=100, help="at most this many events (default 100)")
    v.set_defaults(handler=cmd_events)

    v = verbs.add_parser("secret", help="set (from stdin), delete or list a user's secrets")
    v.add_argument(
        "action",
        choices=["set", "delete", "list"],
        help="set (the value from stdin), delete, or list (names only)",
    )
    v.add_argument("user", help="whose secret")
    v.add_argument("name", nargs="?", help="the secret's name (not for list)")
    v.set_defaults(handler=cmd_secret)

    v = verbs.add_parser("reseal", help="seal every secret again under the first key")
    v.set_defaults(handler=cmd_reseal)


def _world(cfg: Hometier) -> Any:
    from hometier.app import open_db

    return open_db(cfg)


def _now() -> Any:
    from hometier.lifecycle.context import utcnow

    return utcnow()


def _job_row(j: Any) -> dict[str, Any]:
    return {
        "id": j.id,
        "user": j.user,
        "name": j.name,
        "path": j.path,
        "schedule": j.schedule or "once",
        "timezone": j.timezone,
        "next_run_at": j.next_run_at,
        "paused": j.paused,
        "secrets": j.secrets,
    }


def cmd_list(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import jobs as jq

    db = _world(cfg)
    rows = [_job_row(j) for j in jq.list_jobs(db, check_username(args.user) if args.user else None)]
    if args.json:
        emit_json(rows)
        return 0
    table = Table("id", "user", "name", "path", "schedule", "next run", "paused")
    for r in rows:
        nxt = f"{r['next_run_at']:%Y-%m-%d %H:%M} UTC" if r["next_run_at"] else "-"
        sched = f"{r['schedule']} ({r['timezone']})"
        table.add_row(str(r["id"]), r["user"], r["name"], r["path"], sched, nxt, str(r["paused"]))
    out.print(table)
    return 0


def cmd_add(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.config import Archiver, Jobs
    from hometier.jobs import spec
    from hometier.jobs.context import JobsContext
    from hometier.jobs.hubapi import HubAPI
    from hometier.lifecycle.units import parse_duration
    from hometier.state import jobs as jq

    params: dict[str, Any] = {}
    for item in args.param:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item!r}: use NAME=JSON (e.g. day='\"monday\"' or n=3)")
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw  # a bare word is a string
    doc = {
        "name": args.name,
        "path": args.path,
        "schedule": args.schedule,
        "timezone": args.timezone,
        "run_at": args.run_at,
        "parameters": params,
        "secrets": args.secret,
        "timeout": args.timeout,
        "retries": args.retries,
        "keep": args.keep,
        "server": args.server,
    }
    user = check_username(args.user)
    jobs = Jobs(config=cfg.config)
    ctx = JobsContext(
        lc=None,  # type: ignore[arg-type] # validation needs only the limits
        hub=HubAPI(Archiver(config=cfg.config).hub_api_url or "http://unused", "", ""),
        sealer=None if not args.secret else _sealer(cfg),
        min_interval=parse_duration(jobs.min_interval),
        max_timeout=int(parse_duration(jobs.max_timeout).total_seconds()),
    )
    db = _world(cfg)
    now = _now()
    fields = spec.check_spec(doc, ctx, now)
    if fields.get("secrets"):
        jq.sealed_secrets(db, user, fields["secrets"])
    fields["next_run_at"] = spec.first_time(fields, now)
    job = jq.create_job(db, user, "cli", now, **fields)
    emit_json(_job_row(job)) if args.json else out.print(f"job {job.id} added")
    return 0


def _sealer(cfg: Hometier) -> Any:
    from hometier.crypto import Sealer

    return Sealer.from_config(cfg)


def cmd_job(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.jobs import spec
    from hometier.state import jobs as jq

    db, now, verb = _world(cfg), _now(), args.jobs_verb
    if verb == "run":
        run = jq.enqueue(db, args.job, "cli", now)
        doc: Any = {"job": args.job, "run": run.id, "state": run.state}
    elif verb in ("pause", "resume"):
        [job] = jq.set_paused(db, args.job, verb == "pause", "cli", now)
        if verb == "resume":
            job = jq.update_job(db, job.id, "cli", now, next_run_at=spec.resume_time(job, now))
        doc = _job_row(job)
    elif verb == "delete":
        jq.delete_job(db, args.job, "cli", now)
        doc = {"job": args.job, "deleted": True}
    else:
        jq.get_job(db, args.job)
        doc = [
            {
                "id": r.id,
                "attempt": r.attempt,
                "trigger": r.trigger,
                "state": r.state,
                "scheduled_for": r.scheduled_for,
                "finished_at": r.finished_at,
                "reason": r.reason,
                "output": r.output_path,
            }
            for r in jq.list_runs(db, args.job)
        ]
    if args.json:
        emit_json(doc)
    elif isinstance(doc, list):
        table = Table("run", "attempt", "state", "scheduled for", "output", "reason")
        for r in doc:
            table.add_row(
                str(r["id"]), str(r["attempt"]), r["state"],
                f"{r['scheduled_for']:%Y-%m-%d %H:%M}", r["output"] or "", r["reason"] or "",
            )  # fmt: skip
        out.print(table)
    else:
        out.print(json.dumps(doc, default=str))
    return 0


def cmd_pause_all(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.jobs import spec
    from hometier.state import jobs as jq

    db, now = _world(cfg), _now()
    jobs = jq.set_paused(db, None, not args.resume, "cli", now)
    if args.resume:
        for job in jobs:
            jq.update_job(db, job.id, "cli", now, next_run_at=spec.resume_time(job, now))
    doc = {"paused": not args.resume, "jobs": len(jobs)}
    emit_json(doc) if args.json else out.print(
        f"{len(jobs)} job(s) {'resumed' if args.resume else 'paused'}"
    )
    return 0


def cmd_events(args: argparse.Namespace, cfg: Hometier) -> int:
    from sqlalchemy import select

    from hometier.state.models import Event

    db = _world(cfg)
    with db.transaction(write=False) as s:
        q = select(Event).where(Event.user == check_username(args.user), Event.kind == "job")
        rows = [
            {"at": e.at, "actor": e.actor, "detail": e.detail or {}}
            for e in s.scalars(q.order_by(Event.id.desc()).limit(args.limit))
        ]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            out.print(f"{r['at']:%Y-%m-%d %H:%M:%S} {r['actor']}: {json.dumps(r['detail'])}")
    return 0


def cmd_secret(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.jobs.notebook import check_secret_name
    from hometier.state import jobs as jq

    db, now, user = _world(cfg), _now(), check_username(args.user)
    if args.action == "list":
        names = jq.secret_names(db, user)
        if args.json:
            emit_json(names)
        for n in [] if args.json else names:
            out.print(n["name"])
        return 0
    name = check_secret_name(args.name)
    if args.action == "delete":
        jq.delete_secret(db, user, name, "cli", now)
    else:
        # From stdin, never from the command line (which other users can read in ps).
        value = sys.stdin.read().rstrip("\n")
        if not value:
            raise UsageError("give the secret's value on standard input")
        jq.set_secret(db, user, name, _sealer(cfg).seal(value.encode()), "cli", now)
    err.print(f"{user}: secret {name} {'deleted' if args.action == 'delete' else 'stored'}")
    return 0


def cmd_reseal(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import jobs as jq

    n = jq.reseal_all(_world(cfg), _sealer(cfg).rotate, _now())
    err.print(f"{n} secret(s) sealed again under the first key")
    return 0
