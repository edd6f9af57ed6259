"""Verbs of the lifecycle: archive, serve, status, exempt, lease, prune."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from hometier.cli import repo_cmds
from hometier.cli.output import Bar, emit_json, err, human, out, progress_bar
from hometier.config import Archiver, Hometier, Service
from hometier.errors import UsageError
from hometier.lifecycle.homes import check_username
from hometier.lifecycle.units import parse_duration


def register(sub: Any) -> None:
    p = sub.add_parser("archive", help="archive one home now (all safety checks, no idle policy)")
    p.add_argument("user", help="whose home")
    p.set_defaults(handler=cmd_archive)

    p = sub.add_parser("serve", help="run the service and the archiver loop")
    p.add_argument("--once", action="store_true", help="run one archiver cycle and exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --once: print who would be archived and why, archive nothing",
    )
    p.add_argument("--no-api", action="store_true", help="run only the archiver loop")
    p.add_argument("--no-loop", action="store_true", help="run only the HTTP service")
    p.add_argument("--ip", help="address of the HTTP service [c.Service.ip]")
    p.add_argument("--port", type=int, help="port of the HTTP service [c.Service.port]")
    p.set_defaults(handler=cmd_serve)

    r = repo_cmds.repairs().add_parser(
        "state",
        help="rebuild the state database from the bucket and the homes volume (after "
        "the database was lost and no backup is left)",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    r.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document for scripts",
    )
    r.set_defaults(handler=cmd_repair_state)

    p = sub.add_parser("prune", help="forget old snapshots (retention) and free unused data")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    p.set_defaults(handler=cmd_prune)


def _arch(args: argparse.Namespace, cfg: Hometier) -> Archiver:
    return Archiver(config=cfg.config)


def _lifecycle(args: argparse.Namespace, cfg: Hometier, **kw: Any) -> Any:
    from hometier.app import make_lifecycle

    return make_lifecycle(cfg, _arch(args, cfg), rebind=getattr(args, "rebind", False), **kw)


# --- repair state ------------------------------------------------------------------------


def cmd_repair_state(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.rebuild import rebuild_state

    lc = _lifecycle(args, cfg, create_repo=False)
    report = rebuild_state(lc, dry_run=args.dry_run)
    if args.json:
        emit_json(report)
        return 0
    would = "would be " if args.dry_run else ""
    out.print(
        f"{report.users} user(s) with snapshots: {len(report.registered)} home(s) "
        f"{would}registered, {report.snapshots_recorded} snapshot(s) {would}recorded, "
        f"{len(report.archived)} home(s) {would}marked archived "
        f"({len(report.with_quarantine)} with their quarantine)",
        highlight=False,
    )
    for user in report.archived:
        out.print(f"  archived: {user}", highlight=False)
    for user in report.skipped:
        err.print(f"  skipped (no home folder for this name): {user}", highlight=False)
    return 0


# --- prune -------------------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.retention import apply_retention

    lc = _lifecycle(args, cfg, create_repo=False)
    # Prune reports no progress of its own: the bar shows that it works and for how long.
    with progress_bar("pruning", not args.json, unit="items"):
        report = apply_retention(lc, lc.retention, dry_run=args.dry_run)
    if args.json:
        emit_json(report)
        return 0
    for user, ids in report.forgotten.items():
        verb = "would forget" if args.dry_run else "forgot"
        out.print(f"{user}: {verb} {len(ids)} snapshot(s)")
    p = report.prune
    if p is None:
        out.print(f"prune skipped: {report.skipped}")
        return 0
    out.print(
        f"{p.snapshots} snapshots, {p.packs} packs: {p.packs_marked} newly unused "
        f"({human(p.bytes_marked)}) marked, {p.packs_deleted} deleted ({human(p.bytes_deleted)}), "
        f"{p.packs_rescued} rescued, {p.orphans_deleted} orphans removed, "
        f"{p.marks_waiting} mark(s) waiting for the grace period"
    )
    return 0


# --- archive -----------------------------------------------------------------------------


def _bytes_read() -> int | None:
    """Bytes this process has read so far (``rchar`` of ``/proc/self/io``)."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@contextlib.contextmanager
def _read_progress(bar: Bar, total: int | None) -> Iterator[None]:
    """Feed ``bar`` with the bytes this process reads while the block runs, against
    ``total`` (the home's size): the archive reads each changed file once, so this is
    its progress, held below 100 % until it is done (verification reads a little more)."""
    start = _bytes_read()
    if bar.progress is None or start is None or not total:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            now = _bytes_read()
            if now is not None:
                bar.update(min(now - start, total * 0.99), total)

    thread = threading.Thread(target=watch, name="archive-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.update(total, total)


def cmd_archive(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.activity import scan_home
    from hometier.lifecycle.cycle import archive_home

    user = check_username(args.user)
    lc = _lifecycle(args, cfg)
    lc.worker = f"cli:{lc.worker.split(':', 1)[1]}"
    with progress_bar(f"archiving {user}", not args.json) as bar:
        total = None
        if bar.progress is not None:  # a terminal: worth a metadata walk for the percent
            scan = scan_home(lc.layout.path(user))
            total = scan.bytes if scan.complete else None
        with _read_progress(bar, total):
            result = archive_home(lc, user)
    if args.json:
        emit_json(result)
    else:
        line = f"{user}: {result.outcome}"
        if result.snapshot:
            line += f" (snapshot {result.snapshot[:12]}, {human(result.bytes)})"
        out.print(line + (f": {result.reason}" if result.reason else ""), highlight=False)
        for d in result.details:
            err.print(f"  {d}", highlight=False)
    return 0 if result.outcome == "archived" else 1


# --- serve -------------------------------------------------------------------------------


def _idle(d: Any) -> str:
    if d.idle_for is None:
        return ""
    seconds = int(d.idle_for.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f" (idle {seconds // size}{unit})"
    return f" (idle {seconds}s)"


def cmd_serve(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.loop import run_cycle, run_forever

    if args.dry_run and not args.once:
        raise UsageError("--dry-run needs --once (one cycle that only reports)")
    arch = _arch(args, cfg)
    lc = _lifecycle(args, cfg)
    if args.once:
        started = time.monotonic()
        report = run_cycle(lc, dry_run=args.dry_run)
        if args.json:
            doc = dataclasses.asdict(report) | {
                "dry_run": args.dry_run,
                "seconds": time.monotonic() - started,
            }
            emit_json(doc)
        else:
            for d in report.decisions:
                if args.dry_run:
                    # The answer to "who would move?": stdout, and never worded as done.
                    verb = "would archive" if d.chosen else "would keep"
                    out.print(f"{verb} {d.user}: {d.reason}{_idle(d)}", highlight=False)
                elif d.chosen:
                    err.print(f"archiving {d.user}: {d.reason}{_idle(d)}", highlight=False)
            for r in report.results:
                why = f" ({r.reason})" if r.reason else ""
                out.print(f"{r.user}: {r.outcome}{why}", highlight=False)
            for e in report.errors:
                err.print(f"[red]error:[/red] {e}", highlight=False)
            if args.dry_run and not report.decisions and not report.errors:
                out.print(f"no homes under {lc.layout.root}", highlight=False)
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
            adaptive_restores=svc.adaptive_restores,
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
    from hometier.service.notices import install_notifier

    install_notifier(lc, cfg.config)  # archive notices without the API, as with it
    run_forever(lc, parse_duration(arch.interval), stop)
    return 0
