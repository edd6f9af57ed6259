"""Verbs that work on the repository alone: init, backup, restore, check, repair,
upgrade (and ``snapshots``, in ``snapshot_cmds``)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
from typing import TYPE_CHECKING, Any

from hometier.cli.output import emit_json, err, human, out, progress_bar
from hometier.config import Hometier
from hometier.errors import Conflict, Error, NotFound
from hometier.lifecycle.homes import HomeLayout, check_username

if TYPE_CHECKING:
    from hometier.engine.archive import Progress as BackupProgress
    from hometier.engine.restore import RestoreProgress
    from hometier.repo import Repository
    from hometier.repo.snapshot import Snapshot

# The repository, the engine and obstore are imported by the verbs that use them:
# ``fetch-home`` (every login's init container) builds this parser and needs none.


class NoRepository(NotFound):
    """No hometier repository at {}: check --store (HOMETIER_STORE); to start a new one
    there, run `hometier init` first (or `hometier backup --init`)."""


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
    p.add_argument("user", help="whose home")
    p.add_argument("--source", help="folder to archive instead of the user's home")
    p.add_argument("--full", action="store_true", help="read every file (no parent snapshot)")
    p.add_argument(
        "--init",
        action="store_true",
        help="create the repository if the store URL holds none (else that is an error)",
    )
    p.set_defaults(handler=cmd_backup)

    p = sub.add_parser(
        "restore",
        help="bring a home back (state → active), or a snapshot (or one file or folder "
        "of it) into another folder",
    )
    p.add_argument("user", help="whose home or snapshot")
    p.add_argument("--snapshot", default="latest", help="snapshot id or prefix (default: latest)")
    p.add_argument(
        "--target",
        help="folder to restore into (absent or empty; with --include: the folder that "
        "receives the file or folder); default: the home",
    )
    p.add_argument(
        "--include",
        metavar="PATH",
        help="restore only this file or folder of the snapshot (needs --target)",
    )
    p.set_defaults(handler=cmd_restore)

    p = sub.add_parser("check", help="verify the repository")
    p.add_argument("--read-data", action="store_true", help="also download and hash every blob")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("repair", help="rebuild what was lost from what is left")
    what = p.add_subparsers(dest="what", metavar="index|locators|state", required=True)
    _REPAIRS.append(what)
    q = what.add_parser("index", help="rebuild the index from the pack trailers alone")
    q.set_defaults(handler=cmd_repair)
    q = what.add_parser("locators", help="write a locator for every snapshot lacking one")
    q.set_defaults(handler=cmd_repair)

    p = sub.add_parser(
        "upgrade", help="upgrade a repository to the newest format in place (resumable)"
    )
    p.set_defaults(handler=cmd_upgrade)


_REPAIRS: list[Any] = []


def repairs() -> Any:
    """The ``repair`` verb's subcommands, for other verb groups to add theirs (``state``)."""
    return _REPAIRS[-1]


def _repo(cfg: Hometier, *, create: bool = False) -> tuple[Repository, bool]:
    """The repository; created (with its folder) only when ``create`` says so, so that a
    mistyped URL fails instead of leaving an empty repository or folder behind."""
    from hometier.repo import Repository
    from hometier.store import open_store

    if create:
        return Repository.open_or_create(open_store(cfg.store), cache_dir=cfg.cache_dir)
    return Repository.open(open_store(cfg.store, create=False), cache_dir=cfg.cache_dir), False


def cmd_init(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.repo import Repository
    from hometier.store import open_store

    repo = Repository.create(open_store(cfg.store))
    if args.json:
        emit_json({"created": True, "id": repo.config.id, "url": repo.store.url})
    else:
        out.print(f"created repository {repo.config.id} at {repo.store.url}")
    return 0


def cmd_backup(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.engine import backup
    from hometier.repo.config import RepositoryNotFound
    from hometier.store.url import FolderNotFound

    user = check_username(args.user)
    source = args.source or str(HomeLayout(cfg.homes, cfg.home_template).path(user))
    try:
        repo, created = _repo(cfg, create=args.init)
    except (RepositoryNotFound, FolderNotFound):
        raise NoRepository(cfg.store) from None
    if not args.source:
        _refuse_archived(cfg, user, source)
    if created and not args.json:
        err.print(f"created a new repository at {repo.store.url}")
    parent = None
    if not args.full:
        snaps = repo.list_snapshots(user)
        complete = [s for s in snaps if s.stats.complete]
        parent = complete[-1] if complete else None
    total = _size_of(source)
    with progress_bar(f"archiving {user}", not args.json) as bar:

        def show(p: BackupProgress) -> None:
            # Bytes read of the bytes on disk: an unchanged file is skipped unread, so
            # an incremental backup finishes early rather than late.
            bar.update(p.bytes_read, total, label=f"archiving {user}: {p.files} files")

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


class HomeIsArchived(Conflict):
    """{} is archived; restore it first (hometier restore {}). A snapshot of its folder
    now would hold only the notice."""


def _refuse_archived(cfg: Hometier, user: str, source: str) -> None:
    """``backup`` of an archived home would make a snapshot of the stand-in (the notice
    alone): refused, from the database's state, or, when the database cannot be read,
    from the notice being all the folder holds."""
    from hometier.app import open_db
    from hometier.lifecycle.activity import NOTICE_NAME
    from hometier.state import queries

    sqlite = cfg.db.removeprefix("sqlite:///") if cfg.db.startswith("sqlite:///") else None
    try:
        if sqlite is not None and not os.path.exists(sqlite.split("?", 1)[0]):
            raise queries.HomeNotFound(user)  # no state yet: nothing was ever archived
        db = open_db(cfg)
        try:
            cold = queries.get_home(db, user).is_cold
        finally:
            db.dispose()
        if cold:
            raise HomeIsArchived(user, user)
        return
    except (queries.HomeNotFound, Error) as exc:
        if isinstance(exc, HomeIsArchived):
            raise
    try:
        if set(os.listdir(source)) == {NOTICE_NAME}:
            raise HomeIsArchived(user, user)
    except OSError:
        pass


def _size_of(source: str) -> int | None:
    """Bytes of the regular files under ``source`` (metadata only), for the progress
    bar's percent; None when they cannot be counted."""
    from hometier.lifecycle.activity import scan_home

    try:
        scan = scan_home(source)
    except (OSError, ValueError):
        return None
    return scan.bytes if scan.complete else None


def _record(cfg: Hometier, user: str, source: str, snap: Snapshot) -> None:
    """Note the snapshot in the state database too (the dashboard and status read it);
    a database that cannot be opened costs a warning, never the backup."""
    from hometier.app import open_db
    from hometier.state import queries
    from hometier.state.queries import SnapshotInfo

    sqlite = cfg.db.removeprefix("sqlite:///") if cfg.db.startswith("sqlite:///") else None
    try:
        if sqlite is not None and not os.path.exists(sqlite.split("?", 1)[0]):
            raise queries.HomeNotFound(user)  # no state yet: nothing was ever archived
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
    if args.include is not None:
        return _restore_include(args, cfg, user)
    if not args.target and args.snapshot == "latest":
        return _restore_home(args, cfg, user)
    from hometier.engine import restore

    target = args.target or str(HomeLayout(cfg.homes, cfg.home_template).path(user))
    repo, _ = _repo(cfg)
    snap = repo.find_snapshot(args.snapshot, user)
    with progress_bar(f"restoring {user}", not args.json) as bar:

        def show(p: RestoreProgress) -> None:
            bar.update(p.bytes_done, p.bytes_total)

        stats = restore(repo, snap, target, workers=cfg.workers, progress=show)
    if args.json:
        emit_json({"snapshot": snap.id, "target": target, "stats": dataclasses.asdict(stats)})
    else:
        err.print(
            f"restored {snap.id[:12]} into {target}: {stats.files} files, "
            f"{human(stats.bytes)} in {stats.seconds:.1f}s"
        )
    return 0


def _restore_include(args: argparse.Namespace, cfg: Hometier, user: str) -> int:
    """One file or folder of a snapshot into ``--target`` (never into the home itself:
    the home's own copy is the user's)."""
    from hometier.cli.include import restore_path
    from hometier.errors import UsageError

    if not args.target:
        raise UsageError("--include needs --target DIR (the folder that receives it)")
    repo, _ = _repo(cfg)
    snap = repo.find_snapshot(args.snapshot, user)
    doc = restore_path(repo, snap, args.include, args.target)
    doc["snapshot"] = snap.id
    if args.json:
        emit_json(doc)
    else:
        err.print(
            f"restored {doc['path']} of {snap.id[:12]} as {doc['target']}: "
            f"{doc['files']} file(s), {human(doc['bytes'])}",
            highlight=False,
        )
    return 0


def _holds_files(path: Any) -> bool:
    """True when the home folder holds anything but the archive notice."""
    from hometier.lifecycle.activity import NOTICE_NAME

    try:
        return any(name != NOTICE_NAME for name in os.listdir(path))
    except FileNotFoundError:
        return False


def _drop_notice(path: Any) -> None:
    """Remove the archive notice from a home about to be restored (relative to the
    home's descriptor, never following a link: the folder is the user's)."""
    from hometier.lifecycle.activity import NOTICE_NAME

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.unlink(NOTICE_NAME, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _restore_home(args: argparse.Namespace, cfg: Hometier, user: str) -> int:
    """Restore into the home itself, through the lifecycle: the state goes back to active."""
    from hometier.app import make_lifecycle
    from hometier.config import Archiver
    from hometier.engine import restore
    from hometier.lifecycle.restoring import restore_home
    from hometier.state import queries

    lc = make_lifecycle(
        cfg, Archiver(config=cfg.config), create_repo=False, rebind=getattr(args, "rebind", False)
    )
    path = lc.layout.path(user)
    try:
        home = queries.get_home(lc.db, user)
    except queries.HomeNotFound:
        home = None
    with progress_bar(f"restoring {user}", not args.json) as bar:

        def show(p: RestoreProgress) -> None:
            bar.update(p.bytes_done, p.bytes_total)

        if (home is None or home.state == "active") and _holds_files(path):
            # Its files are on the volume: nothing to bring back, and that is no error.
            doc: dict[str, Any] = {"user": user, "outcome": "active", "snapshot": None}
        elif home is None or home.state == "active":
            # Not archived by the lifecycle (or its database was lost): a plain restore
            # into the home, which holds at most the archive notice.
            snap = lc.repo.find_snapshot("latest", user)
            _drop_notice(path)
            queries.get_or_create_home(lc.db, user, str(path), lc.now(), actor="cli")
            stats = restore(lc.repo, snap, path, workers=cfg.workers, progress=show)
            doc = {
                "user": user,
                "outcome": "restored",
                "snapshot": snap.id,
                "stats": dataclasses.asdict(stats),
            }
        else:
            doc = dataclasses.asdict(restore_home(lc, user, "cli", progress=show))
        bar.finish()
    if args.json:
        emit_json(doc)
    elif doc["outcome"] == "active":
        out.print(
            f"{user}: already active: the home's files are on the volume; nothing restored "
            "(a snapshot goes elsewhere with --target DIR)",
            highlight=False,
        )
    else:
        out.print(f"{user}: {doc['outcome']}", highlight=False)
        for name in doc.get("conflicts", []):
            err.print(
                f"[yellow]conflict:[/yellow] kept the existing {name}; the archived "
                f"one is in {doc['conflicts_dir']}",
                highlight=False,
            )
    return 0


def cmd_check(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.engine import check

    repo, _ = _repo(cfg)
    with progress_bar("checking", not args.json, unit="items") as bar:

        def show(phase: str, done: int, total: int) -> None:
            bar.update(done, total, label=f"checking {phase}")

        report = check(repo, read_data=args.read_data, workers=cfg.workers, progress=show)
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
            bar.update(done, total)

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
            bar.update(done, total)

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
