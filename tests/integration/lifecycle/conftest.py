"""Fixtures of the lifecycle integration suite: a ``Lifecycle`` on a real bucket and DB.

- ``clock``: a ``FakeClock`` the ``Lifecycle`` reads instead of the wall clock; tests move
  it (``clock.advance(days=40)``) instead of sleeping or faking file times they cannot set
  (ctime).
- ``state_url``: a fresh state database, once SQLite (a file) and once PostgreSQL.
- ``lifecycle``: a ``Lifecycle`` on that database, a repository under a fresh prefix of the
  real SeaweedFS server (``s3_url``), homes under ``tmp_path/homes`` and the fake clock.
- ``make_home(user)`` fills a home with one of each kind of entry; ``manifest(path)``
  describes a tree (path, type, mode, owner, size, mtime_ns, sha256, link target) so that
  two trees compare with ``==``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.repo import Repository
from hometier.state import open_database
from hometier.store import open_store

IS_ROOT = os.geteuid() == 0
START = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
"""Where the fake clock starts: later than any file time the tests make."""


class FakeClock:
    """A settable clock: ``Lifecycle(clock=FakeClock(...))``."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now

    def set(self, now: dt.datetime) -> None:
        self.now = now


# --- trees -----------------------------------------------------------------------------


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: str | os.PathLike[str]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not ``root`` itself), keyed by relative path:
    (type, mode, uid, gid, size, mtime_ns, sha256 or link target)."""
    top = os.fsencode(root)
    out: dict[str, tuple[Any, ...]] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        here = top + b"/" + rel if rel else top
        for name in sorted(os.listdir(here)):
            sub = rel + b"/" + name if rel else name
            full = top + b"/" + sub
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            extra: str | None = None
            if stat.S_ISREG(st.st_mode):
                extra = _sha256(full)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.fsdecode(os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                stack.append(sub)
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[os.fsdecode(sub)] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                size,
                st.st_mtime_ns,
                extra,
            )
    return out


def write_home(home: Path, seed: str = "", *, owner: tuple[int, int] = (1234, 5678)) -> None:
    """A small home with regular files (one larger, one setuid, one empty), nested and
    empty folders, a relative and a dangling absolute symlink, and old mtimes."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text(f"notes of {seed}\n" * 20)
    (home / "empty").write_bytes(b"")
    (home / "data.bin").write_bytes(random.Random(seed).randbytes(96 * 1024))
    (home / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(home / "run.sh", 0o4755)
    (home / "secret").write_text("s3cr3t")
    os.chmod(home / "secret", 0o600)
    sub = home / "project" / "src"
    sub.mkdir(parents=True)
    (sub / "main.py").write_text(f"print({seed!r})\n")
    (home / "project" / "README").write_text("readme\n")
    (home / "project" / "empty-dir").mkdir()
    os.symlink("project/README", home / "link-rel")
    os.symlink("/nonexistent/target", home / "link-dangling")
    os.mkdir(home / ".config", 0o700)
    (home / ".config" / "settings.json").write_text('{"theme": "dark"}')
    if IS_ROOT:
        os.chown(home / "notes.txt", *owner)
        os.lchown(home / "link-rel", *owner)
    old = 1_600_000_000_123_456_789
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(home, topdown=False)):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(old + i, old + i), follow_symlinks=False)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh state database: SQLite in ``tmp_path``, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def lifecycle(state_url: str, s3_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Lifecycle]:
    """A ``Lifecycle`` on a real database and bucket, homes in ``tmp_path/homes``."""
    (tmp_path / "homes").mkdir()
    db = open_database(state_url)
    lc = Lifecycle(
        db=db,
        repo=Repository.open_or_create(open_store(s3_url))[0],
        layout=HomeLayout(tmp_path / "homes"),
        clock=clock,
        quarantine_for=dt.timedelta(days=3),
        workers=2,
        pack_size=4 * 1024 * 1024,
    )
    try:
        yield lc
    finally:
        db.dispose()


@pytest.fixture
def make_home(lifecycle: Lifecycle) -> Callable[..., Path]:
    """``make_home(user)``: write a small home for ``user`` and return its path."""

    def make(user: str, seed: str | None = None) -> Path:
        path = lifecycle.layout.path(user)
        write_home(path, seed if seed is not None else user)
        return path

    return make
