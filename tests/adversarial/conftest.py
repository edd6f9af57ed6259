"""Fixtures of the adversarial suite: homes owned by an unprivileged user who attacks.

- ``lc``: a ``Lifecycle`` on SQLite and a local-folder repository (fast; the races run
  hundreds of operations), homes under ``tmp_path/homes`` (root's, 0755), a fake clock,
  no JupyterHub (``use_hub=False``: these tests are about the files).
- ``victim``: a home for a fresh unprivileged uid, filled with a few files, owned by it.
- ``canary``: a root-owned folder outside every home that no operation may touch.

Every race prints, at the end of the run, how often the attacker's swap was in flight
during a root operation (``attacker.RACES``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adversarial.attacker import RACES, UID, Canary
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.repo import Repository
from hometier.state import open_database
from hometier.store import open_store

pytestmark = pytest.mark.root

START = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
_uids = itertools.count(UID)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@dataclass
class Victim:
    user: str
    uid: int
    gid: int
    home: Path


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def fill_home(home: Path, uid: int, gid: int) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "notes.txt").write_text("my notes\n" * 50)
    (home / "project").mkdir()
    (home / "project" / "analysis.py").write_text("print('hi')\n")
    (home / "project" / "data").mkdir()
    for i in range(5):
        (home / "project" / "data" / f"d{i}.csv").write_text(f"{i},{i * i}\n" * 100)
    os.chmod(home, 0o700)
    chown_tree(home, uid, gid)
    old = 1_600_000_000_000_000_000
    for dirpath, dirnames, filenames in os.walk(home, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(old, old), follow_symlinks=False)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lc(tmp_path: Path, clock: Clock) -> Iterator[Lifecycle]:
    homes = tmp_path / "homes"
    homes.mkdir(mode=0o755)
    db = open_database(f"sqlite:///{tmp_path / 'state.db'}")
    life = Lifecycle(
        db=db,
        repo=Repository.open_or_create(open_store(f"file://{tmp_path / 'repo'}"))[0],
        layout=HomeLayout(homes),
        clock=clock,
        quarantine_for=dt.timedelta(days=3),
        workers=2,
        pack_size=4 * 1024 * 1024,
    )
    try:
        yield life
    finally:
        db.dispose()


@pytest.fixture
def victim(lc: Lifecycle) -> Victim:
    uid = next(_uids)
    user = f"user{uid}"
    home = lc.layout.path(user)
    fill_home(home, uid, uid)
    return Victim(user, uid, uid, home)


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary(tmp_path / "canary")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RACES:
        terminalreporter.section("races run by the adversarial suite")
        for line in RACES:
            terminalreporter.line(line)
