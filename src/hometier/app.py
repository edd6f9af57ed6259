"""Build the runtime objects from configuration: shared by the CLI and the service."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from hometier.config import Archiver, Hometier
from hometier.config import Retention as RetentionConfig
from hometier.errors import Error, UsageError
from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.policy import Policy, Retention, parse_quiet_hours
from hometier.lifecycle.units import parse_duration, parse_size
from hometier.repo import Repository
from hometier.state import Database, open_database
from hometier.store import open_store


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


def make_lifecycle(cfg: Hometier, arch: Archiver, *, create_repo: bool = True) -> Lifecycle:
    """Open the database (migrating it) and the repository (creating it if allowed)."""
    store = open_store(cfg.store)
    cache = cfg.cache_dir
    repo = (
        Repository.open_or_create(store, cache_dir=cache)[0]
        if create_repo
        else Repository.open(store, cache_dir=cache)
    )
    hub = HubClient(arch.hub_api_url, arch.hub_api_token) if arch.hub_api_url else None
    if hub is not None and not arch.hub_api_token:
        raise UsageError("hub_api_url is set but no token: set HOMETIER_HUB_TOKEN")
    return Lifecycle(
        db=open_db(cfg),
        repo=repo,
        layout=HomeLayout(cfg.homes, cfg.home_template),
        policy=make_policy(arch),
        retention=make_retention(RetentionConfig(config=cfg.config)),
        hub=hub,
        quarantine_for=parse_duration(arch.quarantine_for),
        read_back=arch.read_back,
        restore_from_quarantine=arch.restore_from_quarantine,
        workers=cfg.workers,
        pack_size=cfg.pack_size_mb * 1024 * 1024,
    )
