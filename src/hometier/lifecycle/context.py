"""``Lifecycle``: everything the archive and restore steps need, built once by the edges."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.homes import QUARANTINE_DIR, HomeLayout
from hometier.lifecycle.policy import Policy, Retention
from hometier.repo import Repository
from hometier.state import Database


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_worker() -> str:
    return f"archiver:{socket.gethostname()}:{os.getpid()}"


@dataclass
class Lifecycle:
    db: Database
    repo: Repository
    layout: HomeLayout
    policy: Policy = field(default_factory=Policy)
    retention: Retention = field(default_factory=Retention)
    worker: str = field(default_factory=default_worker)
    clock: Callable[[], dt.datetime] = utcnow
    hub: HubClient | None = None
    use_hub: bool = False
    name_pattern: str = r"^[^A-Z\s]+$"
    """Folder names (after the home template) that can be homes at all."""
    """Idleness needs the Hub: without ``hub`` (or when it cannot be read) nothing is
    archived. The configuration's default is True (``c.Archiver.use_hub``); only a
    deployment without JupyterHub turns it off."""
    quarantine_for: dt.timedelta = dt.timedelta(days=3)
    """How long archived files stay in the quarantine folder before they are removed."""
    read_back: bool = False
    """Download and hash every blob of a new snapshot before deleting the home."""
    restore_from_quarantine: bool = True
    """Bring a home back from its quarantine (instant) when it is still intact."""
    workers: int = 4
    archive_concurrency: int = 1
    """Homes a cycle archives at once (threads; their backups share one writer)."""
    pack_size: int = 32 * 1024 * 1024
    claim_for: dt.timedelta = dt.timedelta(minutes=5)
    """A worker's claim on a home it archives; renewed every quarter of it while the
    worker lives, so a dead worker's homes are free again after at most this long."""
    on_archive: Callable[[Any, float], None] | None = None
    """Called after every archive attempt with its result and seconds (metrics)."""
    restore_wait: dt.timedelta = dt.timedelta(minutes=30)
    """How long a joining restore waits for the one in flight before giving up."""
    last_full_prune: Any = field(default=None, repr=False, compare=False)
    """What this process's last full prune left (``retention.FullPrune``): lets a later
    retention run see that nothing can have become garbage since."""

    @property
    def quarantine_root(self) -> Path:
        return self.layout.root / QUARANTINE_DIR

    def now(self) -> dt.datetime:
        return self.clock()
