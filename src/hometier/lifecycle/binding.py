"""Bind a state database to its homes root and its repository, and refuse a mismatch.

A database records homes by user name under one root, and their snapshots in one
repository. The same database pointed at another root would register and archive that
root's users as if they were its own; pointed at another (say, a mistyped and therefore
empty) repository, it would find none of its snapshots, and a new repository would be
created there silently. The first use binds the database (``state.settings``); later
uses must match, or say ``rebind`` (the homes or the bucket really moved).

The repository is identified by the id in its config object, not by its URL: a bucket
copied elsewhere, or reached through another endpoint, is still the same repository.
"""

from __future__ import annotations

import datetime as dt
import os

from hometier.errors import Conflict
from hometier.repo import Repository
from hometier.repo.config import RepositoryNotFound
from hometier.state import Database
from hometier.state.settings import (
    HOMES_ROOT,
    REPOSITORY_ID,
    REPOSITORY_URL,
    bind_setting,
    get_settings,
    set_setting,
)
from hometier.store import open_store
from hometier.store.url import FolderNotFound


class HomesMismatch(Conflict):
    """The state database {} keeps the homes under {}, not {}. Use the same homes root
    (--homes, HOMETIER_HOMES) or another database (--db); if the homes really moved, run
    once with --rebind."""


class RepositoryMismatch(Conflict):
    """The state database {} belongs to repository {} (last opened at {}), but {} {}.
    Check --store (HOMETIER_STORE); if the repository really moved, run once with
    --rebind."""


def homes_root(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _shown(db: Database) -> str:
    return db.url.render_as_string(hide_password=True)


def check_homes(db: Database, root: str, now: dt.datetime, *, rebind: bool = False) -> None:
    """Bind ``db`` to the homes ``root`` on first use; ``HomesMismatch`` if it is bound
    to another (unless ``rebind``: then it is bound to ``root`` from now on)."""
    root = homes_root(root)
    if rebind:
        set_setting(db, HOMES_ROOT, root, now)
        return
    bound = bind_setting(db, HOMES_ROOT, root, now)
    if bound != root:
        raise HomesMismatch(_shown(db), bound, root)


def open_bound_repository(
    db: Database,
    url: str,
    now: dt.datetime,
    *,
    create: bool,
    rebind: bool = False,
    cache_dir: str | None = None,
) -> Repository:
    """The repository at ``url``, checked against the one ``db`` is bound to.

    A database bound to a repository never creates one (nor, for ``file://``, its
    folder): a location that holds none (a mistyped prefix) raises
    ``RepositoryMismatch``. An unbound database (new, or from before binding existed)
    binds itself to what it opens, creating the repository first when ``create`` allows.
    """
    settings = get_settings(db)
    bound_id = settings.get(REPOSITORY_ID)
    may_create = create and (bound_id is None or rebind)

    def missing() -> RepositoryMismatch:
        return RepositoryMismatch(
            _shown(db),
            (bound_id or "?")[:12],
            settings.get(REPOSITORY_URL, "?"),
            url,
            "holds no repository",
        )

    try:
        store = open_store(url, create=False)
    except FolderNotFound:
        if bound_id is not None and not rebind:
            raise missing() from None
        if not may_create:
            raise
        store = open_store(url)
    try:
        repo = Repository.open(store, cache_dir=cache_dir)
    except RepositoryNotFound:
        if bound_id is not None and not rebind:
            raise missing() from None
        if not may_create:
            raise
        repo = Repository.open_or_create(store, cache_dir=cache_dir)[0]
    rid = repo.config.id
    if rebind:
        set_setting(db, REPOSITORY_ID, rid, now)
    else:
        if bound_id is None:
            # Two processes binding a new database at once: one insert wins, and the
            # other compares with what it stored.
            bound_id = bind_setting(db, REPOSITORY_ID, rid, now)
        if bound_id != rid:
            raise RepositoryMismatch(
                _shown(db),
                bound_id[:12],
                settings.get(REPOSITORY_URL, "?"),
                url,
                f"holds repository {rid[:12]}",
            )
    if settings.get(REPOSITORY_URL) != store.url:
        set_setting(db, REPOSITORY_URL, store.url, now)
    return repo
