"""Verbs of the lifecycle: archive, serve, status, exempt, lease."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from typing import Any

from rich.table import Table

from hometier.cli.output import emit_json, err, human, out
from hometier.config import Archiver, Hometier, Service
from hometier.lifecycle.homes import check_username
from hometier.lifecycle.units import parse_duration


def register(sub: Any) -> None:
    p = sub.add_parser("archive", help="archive one home now (all safety checks, no idle policy)")
    p.add_argument("user")
    p.set_defaults(handler=cmd_archive)

    p = sub.add_parser("serve", help="run the archiver loop")
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p.add_argument(
        "--dry-run", action="store_true", help="with --once: show the decisions, archive nothing"
    )
    p.add_argument("--no-api", action="store_true", help="run only the archiver loop")
    p.add_argument("--no-loop", action="store_true", help="run only the HTTP service")
    p.add_argument("--ip", help="address of the HTTP service [c.Service.ip]")
    p.add_argument("--port", type=int, help="port of the HTTP service [c.Service.port]")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("status", help="state of one home or of all")
    p.add_argument("user", nargs="?")
    p.add_argument("--state", help="only homes in this state")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("exempt", help="never archive a user's home (or --remove that)")
    p.add_argument("user")
    p.add_argument("--remove", action="store_true")
    p.add_argument("--reason", default="")
    p.set_defaults(handler=cmd_exempt)

    p = sub.add_parser("lease", help="hold a home hot for a while (jobs, extra servers)")
    p.add_argument("user", nargs="?")
    p.add_argument("--for", dest="duration", default="1h", help="how long (e.g. 2h)")
    p.add_argument("--holder", default="cli", help="who holds it (a job id, a host)")
    p.add_argument("--purpose", default="")
    p.add_argument("--release", metavar="LEASE_ID", help="release this lease instead")
    p.add_argument("--renew", metavar="LEASE_ID", help="renew this lease for --for")
    p.set_defaults(handler=cmd_lease)

    p = sub.add_parser("prune", help="forget old snapshots (retention) and free unused data")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.retention import apply_retention

    lc = make_lifecycle(cfg, _arch(args, cfg), create_repo=False)
    report = apply_retention(lc, lc.retention, dry_run=args.dry_run)
    if args.json:
        emit_json(dataclasses.asdict(report))
        return 0
    for user, ids in report.forgotten.items():
        verb = "would forget" if args.dry_run else "forgot"
        out.print(f"{user}: {verb} {len(ids)} snapshot(s)")
    p = report.prune
    assert p is not None
    out.print(
        f"{p.snapshots} snapshots, {p.packs} packs: {p.packs_marked} newly unused "
        f"({human(p.bytes_marked)}) marked, {p.packs_deleted} deleted ({human(p.bytes_deleted)}), "
        f"{p.packs_rescued} rescued, {p.orphans_deleted} orphans removed, "
        f"{p.marks_waiting} mark(s) waiting for the grace period"
    )
    return 0


def _arch(args: argparse.Namespace, cfg: Hometier) -> Archiver:
    return Archiver(config=cfg.config)


def cmd_archive(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.cycle import archive_home

    user = check_username(args.user)
    lc = make_lifecycle(cfg, _arch(args, cfg))
    lc.worker = f"cli:{lc.worker.split(':', 1)[1]}"
    result = archive_home(lc, user)
    if args.json:
        emit_json(dataclasses.asdict(result))
    else:
        line = f"{user}: {result.outcome}"
        if result.snapshot:
            line += f" (snapshot {result.snapshot[:12]}, {human(result.bytes)})"
        out.print(line + (f": {result.reason}" if result.reason else ""))
        for d in result.details:
            err.print(f"  {d}", highlight=False)
    return 0 if result.outcome == "archived" else 1


def cmd_serve(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.loop import run_cycle, run_forever

    arch = _arch(args, cfg)
    lc = make_lifecycle(cfg, arch)
    if args.once:
        report = run_cycle(lc, dry_run=args.dry_run)
        if args.json:
            emit_json(dataclasses.asdict(report))
        else:
            for d in report.decisions:
                mark = "[green]archive[/green]" if d.chosen else "keep"
                err.print(f"{mark} {d.user}: {d.reason}", highlight=False)
            for r in report.results:
                out.print(f"{r.user}: {r.outcome}" + (f" ({r.reason})" if r.reason else ""))
            for e in report.errors:
                err.print(f"[red]error:[/red] {e}", highlight=False)
        return 1 if report.errors else 0
    interval = None if args.no_loop else parse_duration(arch.interval)
    if not args.no_api:
        from hometier.app import make_spaces
        from hometier.config import Spaces
        from hometier.service.app import run_service

        svc = Service(config=cfg.config)
        spaces = make_spaces(cfg, db=lc.db)
        ip = args.ip or svc.ip
        port = args.port or svc.port
        err.print(
            f"hometier service on http://{ip}:{port}{svc.base_url}"
            + (f", archiving every {arch.interval}" if interval else "")
        )
        run_service(
            lc,
            ip=ip,
            port=port,
            prefix=svc.base_url,
            interval=interval,
            metrics_public=svc.metrics_public,
            config=cfg.config,
            restore_concurrency=svc.restore_concurrency,
            spaces=spaces,
            spaces_interval=Spaces(config=cfg.config).sync_interval,
        )
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err.print(
        f"hometier archiver running every {arch.interval}; homes {cfg.homes}, store {cfg.store}"
    )
    run_forever(lc, parse_duration(arch.interval), stop)
    return 0


def _home_row(h: Any) -> dict[str, Any]:
    return {
        "user": h.user,
        "state": h.state,
        "path": h.path,
        "hot_bytes": h.hot_bytes,
        "hot_files": h.hot_files,
        "stored_bytes": h.stored_bytes,
        "last_activity": h.last_activity,
        "last_activity_source": h.last_activity_source,
        "exempt": h.exempt,
        "error": h.error,
        "state_since": h.state_since,
        "archived_at": h.archived_at,
        "restored_at": h.restored_at,
    }


def cmd_status(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.context import utcnow
    from hometier.state import queries

    lc = make_lifecycle(cfg, _arch(args, cfg))
    if args.user:
        homes = [queries.get_home(lc.db, check_username(args.user))]
    else:
        homes = queries.list_homes(lc.db, args.state)
    rows = [_home_row(h) for h in homes]
    if args.user:
        rows[0]["leases"] = [
            {"id": le.id, "holder": le.holder, "purpose": le.purpose, "expires_at": le.expires_at}
            for le in queries.active_leases(lc.db, args.user, utcnow())
        ]
    if args.json:
        emit_json(rows[0] if args.user else rows)
        return 0
    table = Table("user", "state", "on volume", "stored", "last activity", "error")
    for r in rows:
        seen = r["last_activity"]
        table.add_row(
            r["user"],
            r["state"] + (" (exempt)" if r["exempt"] else ""),
            human(r["hot_bytes"]),
            human(r["stored_bytes"]),
            f"{seen:%Y-%m-%d %H:%M} ({r['last_activity_source']})" if seen else "-",
            r["error"] or "",
        )
    out.print(table)
    return 0


def cmd_exempt(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.context import utcnow
    from hometier.state import queries

    user = check_username(args.user)
    lc = make_lifecycle(cfg, _arch(args, cfg))
    queries.get_or_create_home(lc.db, user, str(lc.layout.path(user)), utcnow(), actor="cli")
    queries.set_exempt(lc.db, user, not args.remove, args.reason, "cli", utcnow())
    if args.json:
        emit_json({"user": user, "exempt": not args.remove})
    else:
        out.print(f"{user}: {'no longer exempt' if args.remove else 'exempt from archiving'}")
    return 0


def cmd_lease(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.app import make_lifecycle
    from hometier.lifecycle.context import utcnow
    from hometier.state import queries

    lc = make_lifecycle(cfg, _arch(args, cfg))
    now = utcnow()
    if args.release:
        released = queries.release_lease(lc.db, args.release, now)
        emit_json({"lease": args.release, "released": released}) if args.json else out.print(
            f"lease {args.release} {'released' if released else 'was already released'}"
        )
        return 0
    duration = parse_duration(args.duration)
    if args.renew:
        lease = queries.renew_lease(lc.db, args.renew, duration, now)
    else:
        if not args.user:
            err.print("lease needs a USER (or --release/--renew LEASE_ID)")
            return 2
        user = check_username(args.user)
        queries.get_or_create_home(lc.db, user, str(lc.layout.path(user)), now, actor="cli")
        lease = queries.acquire_lease(lc.db, user, args.holder, args.purpose, duration, now)
    doc = {"lease": lease.id, "holder": lease.holder, "expires_at": lease.expires_at}
    if args.json:
        emit_json(doc)
    else:
        out.print(lease.id)
        err.print(f"held by {lease.holder} until {lease.expires_at:%Y-%m-%d %H:%M:%S %Z}")
    return 0
