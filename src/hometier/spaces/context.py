"""``SpacesContext``: everything the spaces' operations need, built once by the edges
(``hometier.app.make_spaces``), and the repositories spaces are archived into."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hometier.errors import Conflict
from hometier.repo import Repository
from hometier.spaces.members import HubGroups
from hometier.spaces.posix import UserMap, prepare_root
from hometier.state import Database
from hometier.state.spaces import Space
from hometier.store import Store, open_store

Identity = Literal["uids", "container"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class SpacesContext:
    db: Database
    root: Path
    identity: Identity = "uids"
    users: UserMap = field(default_factory=UserMap)
    group_prefix: str = "hts"
    gid_range: tuple[int, int] = (61000, 64999)
    manage_groups: bool = True
    require_mount_point: bool = True
    hub: HubGroups | None = None
    store_url: str = ""
    """Repository of public and private spaces (shared by them: dedup across spaces)."""
    secret_store_url: str = ""
    """Secret spaces get one repository each, under this URL; empty: never archived."""
    secret_open: Callable[[str], Store] | None = None
    """Opens a secret space's store (its own credentials); default ``open_store``."""
    mount_path: str = "~/shared/{name}"
    software_mount_path: str = "/opt/software/{name}"
    modulefiles: str = "modulefiles"
    inactive_after: dt.timedelta | None = None
    quarantine_for: dt.timedelta = dt.timedelta(days=3)
    measure_every: dt.timedelta = dt.timedelta(hours=1)
    homes: Path | None = None
    """Root of the homes (links in ``~/shared``), with ``home_template``."""
    home_template: str = "{username}"
    workers: int = 4
    clock: Callable[[], dt.datetime] = utcnow
    actor: str = field(default_factory=lambda: f"spaces:{os.getpid()}")
    _root_fd: int = -1
    _repos: dict[str, Repository] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> dt.datetime:
        return self.clock()

    @property
    def root_fd(self) -> int:
        """The spaces root, opened (and checked) once."""
        with self._lock:
            if self._root_fd < 0:
                self._root_fd = prepare_root(self.root, require_mount=self.require_mount_point)
            return self._root_fd

    def close(self) -> None:
        with self._lock:
            if self._root_fd >= 0:
                os.close(self._root_fd)
                self._root_fd = -1

    def can_archive(self, space: Space) -> bool:
        return bool(self.secret_store_url if space.level == "secret" else self.store_url)

    def repository(self, space: Space, *, create: bool = True) -> Repository:
        """The repository ``space`` is archived into: the spaces' shared one, or, for a
        secret space, its own (own key, own dedup domain) under ``secret_store_url``."""
        if space.level == "secret":
            if not self.secret_store_url:
                raise NoSecretStore()
            url = f"{self.secret_store_url.rstrip('/')}/{space.key}"
        else:
            url = self.store_url
        with self._lock:
            repo = self._repos.get(url)
            if repo is None:
                opener = (
                    self.secret_open if space.level == "secret" and self.secret_open else open_store
                )
                store = opener(url)
                repo = Repository.open_or_create(store)[0] if create else Repository.open(store)
                self._repos[url] = repo
            return repo


class NoSecretStore(Conflict):
    """Secret spaces are not archived here: c.Spaces.secret_store is not set."""
