"""Build the runtime objects from configuration: shared by the CLI and the service."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from hometier.config import Archiver, Hometier
from hometier.config import Retention as RetentionConfig
from hometier.errors import Error, UsageError
from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.binding import check_homes, open_bound_repository
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.policy import Policy, Retention, parse_quiet_hours
from hometier.lifecycle.units import parse_duration, parse_size
from hometier.state import Database, open_database

if TYPE_CHECKING:
    from hometier.spaces.context import SpacesContext


def make_policy(arch: Archiver) -> Policy:
    try:
        tz: dt.tzinfo = zoneinfo.ZoneInfo(arch.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"unknown time zone {arch.timezone!r}") from exc
    return Policy(
        inactive_after=parse_duration(arch.inactive_after),
        min_size=parse_size(arch.min_size),
        max_size=parse_size(arch.max_size),
        max_per_cycle=arch.max_per_cycle,
        quiet_hours=parse_quiet_hours(arch.quiet_hours),
        timezone=tz,
    )


def make_retention(ret: RetentionConfig) -> Retention:
    within = parse_duration(ret.keep_within) if ret.keep_within.strip() else None
    every = parse_duration(ret.prune_interval)
    return Retention(
        keep_last=ret.keep_last,
        keep_within=within,
        grace=parse_duration(ret.grace),
        every=every if every.total_seconds() > 0 else None,
        repack_waste=ret.repack_waste if ret.repack_waste < 1 else None,
        repack_max=parse_size(ret.repack_max),
    )


class DatabaseUnavailable(Error):
    """The state database {} could not be opened: {}"""

    exit_code = 6
    http_status = 503


def open_db(cfg: Hometier) -> Database:
    """Open (and migrate) the state database; an SQLite file's folder is created."""
    url = cfg.db
    try:
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :].split("?", 1)[0]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open_database(url)
    except (OSError, SQLAlchemyError) as exc:
        shown = url.split("@", 1)[-1] if "@" in url else url
        raise DatabaseUnavailable(shown, str(exc).splitlines()[0]) from exc


def open_bound_db(cfg: Hometier, *, rebind: bool = False) -> Database:
    """The state database, checked to be the one of ``cfg.homes`` (``lifecycle.binding``):
    what verbs that need only the database (``status``, ``exempt``, ``lease``) open."""
    db = open_db(cfg)
    try:
        check_homes(db, cfg.homes, dt.datetime.now(dt.UTC), rebind=rebind)
    except BaseException:
        db.dispose()
        raise
    return db


def make_lifecycle(
    cfg: Hometier, arch: Archiver, *, create_repo: bool = True, rebind: bool = False
) -> Lifecycle:
    """Open the database (migrating it; bound to its homes root and repository, see
    ``lifecycle.binding``) and the repository (created only for a new database, and only
    if ``create_repo``)."""
    hub = HubClient(arch.hub_api_url, arch.hub_api_token) if arch.hub_api_url else None
    if hub is not None and not arch.hub_api_token:
        raise UsageError("hub_api_url is set but no token: set HOMETIER_HUB_TOKEN")
    db = open_bound_db(cfg, rebind=rebind)
    try:
        repo = open_bound_repository(
            db,
            cfg.store,
            dt.datetime.now(dt.UTC),
            create=create_repo,
            rebind=rebind,
            cache_dir=cfg.cache_dir,
        )
    except BaseException:
        db.dispose()
        raise
    return Lifecycle(
        db=db,
        repo=repo,
        layout=HomeLayout(cfg.homes, cfg.home_template),
        policy=make_policy(arch),
        retention=make_retention(RetentionConfig(config=cfg.config)),
        hub=hub,
        use_hub=arch.use_hub,
        name_pattern=arch.username_pattern,
        quarantine_for=parse_duration(arch.quarantine_for),
        read_back=arch.read_back,
        restore_from_quarantine=arch.restore_from_quarantine,
        archive_concurrency=max(1, arch.archive_concurrency),
        workers=cfg.workers,
        pack_size=cfg.pack_size_mb * 1024 * 1024,
    )


def make_spaces(cfg: Hometier, *, db: Database | None = None) -> SpacesContext | None:
    """The shared spaces' context from ``c.Spaces`` (None when no root is set)."""
    from hometier.config import Spaces
    from hometier.spaces.context import SpacesContext
    from hometier.spaces.members import HubGroups
    from hometier.spaces.posix import UserMap
    from hometier.spaces.stores import secret_opener

    conf = Spaces(config=cfg.config)
    if not conf.root:
        return None
    arch = Archiver(config=cfg.config)
    hub = HubGroups(arch.hub_api_url, arch.hub_api_token) if arch.hub_api_url else None
    if conf.gid_min > conf.gid_max or conf.gid_min < 1000:
        raise UsageError("c.Spaces.gid_min..gid_max must be a range above 999")
    inactive = parse_duration(conf.inactive_after) if conf.inactive_after.strip() else None
    return SpacesContext(
        db=db or open_db(cfg),
        root=Path(conf.root).absolute(),
        identity="container" if conf.identity == "container" else "uids",
        users=UserMap(conf.user_template),
        group_prefix=conf.group_prefix,
        gid_range=(conf.gid_min, conf.gid_max),
        manage_groups=conf.manage_groups,
        require_mount_point=conf.require_mount_point,
        hub=hub,
        store_url=conf.store or f"{cfg.store.rstrip('/')}-spaces",
        secret_store_url=conf.secret_store,
        secret_open=secret_opener(conf.secret_store_env),
        mount_path=conf.mount_path,
        software_mount_path=conf.software_mount_path,
        modulefiles=conf.modulefiles,
        inactive_after=inactive,
        quarantine_for=parse_duration(conf.quarantine_for),
        measure_every=parse_duration(conf.measure_every),
        homes=Path(cfg.homes).absolute(),
        home_template=cfg.home_template,
        workers=cfg.workers,
    )
