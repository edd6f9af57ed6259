"""Verbs that work on the repository alone: init, backup, restore, snapshots, check,
repair, upgrade."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import Any

from rich.table import Table

from hometier.cli.output import emit_json, err, human, out, progress_bar
from hometier.config import Hometier
from hometier.engine import backup, check, restore
from hometier.engine.archive import Progress as BackupProgress
from hometier.engine.restore import RestoreProgress
from hometier.errors import Error
from hometier.lifecycle.homes import HomeLayout, check_username
from hometier.repo import Repository
from hometier.repo.snapshot import Snapshot
from hometier.store import open_store


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags accepted after the verb as well as before it."""
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document for scripts",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create a repository at the store URL")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("backup", help="snapshot a user's home, leaving it as it is")
    p.add_argument("user")
    p.add_argument("--source", help="folder to archive instead of the user's home")
    p.add_argument("--full", action="store_true", help="read every file (no parent snapshot)")
    p.set_defaults(handler=cmd_backup)

    p = sub.add_parser("restore", help="restore a user's snapshot into an empty folder")
    p.add_argument("user")
    p.add_argument("--snapshot", default="latest", help="snapshot id or prefix (default: latest)")
    p.add_argument("--target", help="folder to restore into (absent or empty); default: the home")
    p.set_defaults(handler=cmd_restore)

    p = sub.add_parser("snapshots", help="list a user's snapshots")
    p.add_argument("user", nargs="?")
    p.set_defaults(handler=cmd_snapshots)

    p = sub.add_parser("check", help="verify the repository")
    p.add_argument("--read-data", action="store_true", help="also download and hash every blob")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("repair", help="rebuild repository metadata from what the bucket holds")
    what = p.add_subparsers(dest="what", metavar="index|locators", required=True)
    q = what.add_parser("index", help="rebuild the index from the pack trailers alone")
    q.set_defaults(handler=cmd_repair)
    q = what.add_parser("locators", help="write a locator for every snapshot lacking one")
    q.set_defaults(handler=cmd_repair)

    p = sub.add_parser(
        "upgrade", help="upgrade a repository to the newest format in place (resumable)"
    )
    p.set_defaults(handler=cmd_upgrade)


def _repo(cfg: Hometier, *, create: bool = False) -> tuple[Repository, bool]:
    store = open_store(cfg.store)
    if create:
        return Repository.open_or_create(store, cache_dir=cfg.cache_dir)
    return Repository.open(store, cache_dir=cfg.cache_dir), False


def cmd_init(args: argparse.Namespace, cfg: Hometier) -> int:
    repo = Repository.create(open_store(cfg.store))
    if args.json:
        emit_json({"created": True, "id": repo.config.id, "url": repo.store.url})
    else:
        out.print(f"created repository {repo.config.id} at {repo.store.url}")
    return 0


def cmd_backup(args: argparse.Namespace, cfg: Hometier) -> int:
    user = check_username(args.user)
    source = args.source or str(HomeLayout(cfg.homes, cfg.home_template).path(user))
    repo, created = _repo(cfg, create=True)
    if created and not args.json:
        err.print(f"created a new repository at {repo.store.url}")
    parent = None
    if not args.full:
        snaps = repo.list_snapshots(user)
        complete = [s for s in snaps if s.stats.complete]
        parent = complete[-1] if complete else None
    with progress_bar(f"archiving {user}", not args.json) as bar:

        def show(p: BackupProgress) -> None:
            if bar is not None:
                bar.update(
                    bar.task_ids[0],
                    completed=p.bytes_read,
                    description=f"archiving {user}: {p.files} files",
                )

        snap = backup(
            repo,
            source,
            user=user,
            parent=parent,
            workers=cfg.workers,
            pack_size=cfg.pack_size_mb * 1024 * 1024,
            progress=show,
        )
    _record(cfg, user, source, snap)
    if args.json:
        emit_json(
            {
                "snapshot": snap.id,
                "user": user,
                "parent": snap.parent,
                "stats": dataclasses.asdict(snap.stats),
                "store": repo.store.stats.snapshot(),
            }
        )
    else:
        s = snap.stats
        out.print(snap.id)
        err.print(
            f"{s.files} files, {human(s.bytes)}; read {human(s.bytes_read)}, "
            f"stored {human(s.bytes_new_stored)} new in {s.packs_new} pack(s)"
        )
        for kind in ("skipped", "changed", "errors"):
            for line in getattr(s, kind):
                err.print(f"[yellow]{kind}:[/yellow] {line}", highlight=False)
    return 0 if snap.stats.complete else 1


def _record(cfg: Hometier, user: str, source: str, snap: Snapshot) -> None:
    """Note the snapshot in the state database too (the dashboard and status read it);
    a database that cannot be opened costs a warning, never the backup."""
    from hometier.app import open_db
    from hometier.state import queries
    from hometier.state.queries import SnapshotInfo

    try:
        db = open_db(cfg)
        try:
            now = dt.datetime.now(dt.UTC)
            queries.get_or_create_home(db, user, source, now, actor="cli")
            info = SnapshotInfo(
                id=snap.id,
                time=snap.time,
                files=snap.stats.files,
                bytes=snap.stats.bytes,
                stored_bytes=snap.stats.bytes_new_stored,
                parent=snap.parent,
            )
            queries.record_snapshot(db, user, info, now)
        finally:
            db.dispose()
    except Error as exc:
        err.print(f"[yellow]warning:[/yellow] snapshot not recorded in the database: {exc}")


def cmd_restore(args: argparse.Namespace, cfg: Hometier) -> int:
    user = check_username(args.user)
    if not args.target and args.snapshot == "latest":
        return _restore_home(args, cfg, user)
    target = args.target or str(HomeLayout(cfg.homes, cfg.home_template).path(user))
    repo, _ = _repo(cfg)
    snap = repo.find_snapshot(args.snapshot, user)
    with progress_bar(f"restoring {user}", not args.json) as bar:

        def show(p: RestoreProgress) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=p.bytes_done, total=p.bytes_total)

        stats = restore(repo, snap, target, workers=cfg.workers, progress=show)
    if args.json:
        emit_json({"snapshot": snap.id, "target": target, "stats": dataclasses.asdict(stats)})
    else:
        err.print(
            f"restored {snap.id[:12]} into {target}: {stats.files} files, "
            f"{human(stats.bytes)} in {stats.seconds:.1f}s"
        )
    return 0


def _restore_home(args: argparse.Namespace, cfg: Hometier, user: str) -> int:
    """Restore into the home itself, through the lifecycle: the state goes back to active."""
    from hometier.app import make_lifecycle
    from hometier.config import Archiver
    from hometier.lifecycle.restoring import restore_home
    from hometier.state import queries

    lc = make_lifecycle(cfg, Archiver(config=cfg.config), create_repo=False)
    path = lc.layout.path(user)
    try:
        home = queries.get_home(lc.db, user)
    except queries.HomeNotFound:
        home = None
    if home is None or home.state == "active":
        # Not archived by the lifecycle: a plain restore into an empty or absent home.
        snap = lc.repo.find_snapshot("latest", user)
        queries.get_or_create_home(lc.db, user, str(path), lc.now(), actor="cli")
        stats = restore(lc.repo, snap, path, workers=cfg.workers)
        doc = {
            "user": user,
            "outcome": "restored",
            "snapshot": snap.id,
            "stats": dataclasses.asdict(stats),
        }
    else:
        with progress_bar(f"restoring {user}", not args.json) as bar:

            def show(p: RestoreProgress) -> None:
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=p.bytes_done, total=p.bytes_total)

            result = restore_home(lc, user, "cli", progress=show)
        doc = dataclasses.asdict(result)
    if args.json:
        emit_json(doc)
    else:
        err.print(f"{user}: {doc['outcome']}", highlight=False)
        for name in doc.get("conflicts", []):
            err.print(
                f"[yellow]conflict:[/yellow] kept the existing {name}; the archived "
                f"one is in {doc['conflicts_dir']}",
                highlight=False,
            )
    return 0


def _snap_row(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "user": s.user,
        "time": s.time.isoformat(),
        "files": s.stats.files,
        "bytes": s.stats.bytes,
        "stored_bytes": s.stats.bytes_new_stored,
        "parent": s.parent,
        "complete": s.stats.complete,
    }


def cmd_snapshots(args: argparse.Namespace, cfg: Hometier) -> int:
    if args.user is not None:
        check_username(args.user)
    repo, _ = _repo(cfg)
    snaps = repo.list_snapshots(args.user)
    if args.json:
        emit_json([_snap_row(s) for s in snaps])
        return 0
    table = Table("id", "user", "time", "files", "size", "stored")
    for s in snaps:
        table.add_row(
            s.id[:12],
            s.user,
            s.time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(s.stats.files),
            human(s.stats.bytes),
            human(s.stats.bytes_new_stored),
        )
    out.print(table)
    return 0


def cmd_check(args: argparse.Namespace, cfg: Hometier) -> int:
    repo, _ = _repo(cfg)
    report = check(repo, read_data=args.read_data, workers=cfg.workers)
    if args.json:
        emit_json(dataclasses.asdict(report) | {"ok": report.ok})
    else:
        out.print(
            f"ok: {report.snapshots} snapshots, {report.trees} trees, {report.packs} packs, "
            f"{report.locators} locators"
            + (
                f", {report.packs_read} packs read ({human(report.bytes_read)})"
                if args.read_data
                else ""
            )
        )
        for w in report.warnings:
            err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    return 0


def _maintenance_progress(args: argparse.Namespace, what: str) -> Any:
    return progress_bar(what, not args.json)


def cmd_repair(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.engine.maintenance import repair_index, repair_locators

    repo, _ = _repo(cfg)
    now = dt.datetime.now(dt.UTC)
    with _maintenance_progress(args, f"repairing the {args.what}") as bar:

        def show(_kind: str, done: int, total: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=done, total=total)

        if args.what == "index":
            report = repair_index(repo, now=now, workers=max(cfg.workers, 8), progress=show)
        else:
            report = repair_locators(repo, now=now, workers=cfg.workers, progress=show)
    return _maintenance_done(args, report)


def cmd_upgrade(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.engine.maintenance import upgrade

    repo, _ = _repo(cfg)
    with _maintenance_progress(args, "upgrading the repository") as bar:

        def show(_kind: str, done: int, total: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=done, total=total)

        report = upgrade(repo, now=dt.datetime.now(dt.UTC), workers=cfg.workers, progress=show)
    code = _maintenance_done(args, report)
    if not args.json:
        out.print(f"repository format version {repo.config.version}")
    return code


def _maintenance_done(args: argparse.Namespace, report: Any) -> int:
    if args.json:
        emit_json(dataclasses.asdict(report) | {"ok": not report.problems})
    else:
        if report.packs:
            out.print(
                f"{report.packs} packs, {report.entries} entries: "
                f"{report.index_objects_written} index object(s) written, "
                f"{report.index_objects_deleted} replaced"
            )
        if report.snapshots:
            out.print(f"{report.snapshots} snapshots: {report.locators_written} locator(s) written")
        for line in report.problems:
            err.print(f"[yellow]problem:[/yellow] {line}", highlight=False)
    return 1 if report.problems else 0
