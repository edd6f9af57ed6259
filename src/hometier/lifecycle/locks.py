"""A per-home file lock that serialises moving a home's files (archive, restore, purge).

The database decides *whether* a home may be moved; this lock makes sure two processes
never move the same home's files at once (an archiver finishing its move while a login
restores). It is a ``flock`` on a file in the quarantine folder, on the homes volume
itself, so every process that can move the files sees it (NFSv4 carries such locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from hometier.engine.fsutil import ensure_private_root
from hometier.errors import Conflict
from hometier.repo.snapshot import local_key


class HomeBusy(Conflict):
    """The files of {} are being moved by another process; try again shortly."""

    http_status = 409


def lock_is_free(root: Path, user: str) -> bool:
    """True if nobody holds ``user``'s lock right now (its holder, if any, is dead)."""
    try:
        with home_lock(root, user, timeout=0):
            return True
    except HomeBusy:
        return False


@contextlib.contextmanager
def home_lock(root: Path, user: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold the lock of ``user``'s home; ``HomeBusy`` after ``timeout`` seconds."""
    # The quarantine root is root's alone (0700): other users must not list user names
    # and snapshot ids there. Made (or narrowed) before anything is created inside.
    ensure_private_root(root)
    locks = root / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(
        locks / f"{local_key(user)}.lock",
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HomeBusy(user) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
