"""Helpers of the crash suite (``test_crash.py``): homes, manifests, the real command.

- ``make_home(path, seed, big=...)`` fills a home with a few files of every common kind
  (text, executable, hidden, empty, empty folder, symlinks, one large random file that
  spans several chunks and packs), every time set in the past so the home is idle.
- ``manifest(root)`` describes every entry under a home (path, type, mode, size,
  mtime_ns, sha256, symlink target) for ``==`` comparison; ``diff`` explains a mismatch.
- ``Hometier`` runs the real ``hometier`` command for one test setup (its own homes,
  store, database and config file): ``run`` in a subprocess (faults, kills, timeouts),
  ``cli`` in-process for the quick follow-up steps; both return a ``Result``.
- ``set_home_times`` moves ``claimed_until``/``state_since`` of homes in the state
  database (SQLite or PostgreSQL): how a test simulates time passing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

MiB = 1024 * 1024
OLD_NS = 1_600_000_000_123_456_789  # 2020-09-13: long idle
KILLED = -signal.SIGKILL

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "socket",
}


# --- homes and manifests -------------------------------------------------------------


def make_home(path: Path, seed: int, *, big: int = 6 * MiB, bigs: int = 1) -> None:
    """A small home: several kinds of entries, ``bigs`` random files of ``big`` bytes."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    (path / "notes.txt").write_text(f"notes of home {seed}\n" * (10 + seed))
    (path / ".bashrc").write_text(f"export SEED={seed}\n")
    os.chmod(path / ".bashrc", 0o600)
    (path / "bin").mkdir()
    (path / "bin" / "run.sh").write_text("#!/bin/sh\necho hello\n")
    os.chmod(path / "bin" / "run.sh", 0o755)
    (path / "data").mkdir()
    for i in range(bigs):
        # Random bytes: incompressible and unique to this home, so nothing dedups.
        (path / "data" / f"big-{i}.bin").write_bytes(rng.randbytes(big))
    (path / "data" / "empty").write_bytes(b"")
    (path / "data" / "small.csv").write_text("".join(f"{i},{rng.random()}\n" for i in range(500)))
    (path / "emptydir").mkdir()
    os.symlink("notes.txt", path / "link-to-notes")
    os.symlink("../nowhere/at/all", path / "data" / "dangling")
    _age(path)


def _age(root: Path) -> None:
    """Set every mtime (and atime) in the past, children before their folders."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            os.utime(p, ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    os.utime(root, ns=(OLD_NS, OLD_NS))


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while block := os.read(fd, 4 * MiB):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


Manifest = dict[str, dict[str, Any]]


def manifest(root: Path) -> Manifest:
    """Every entry under ``root`` (not followed through symlinks) → its attributes.

    ``"."`` is the home folder itself, with its type and mode only: its mtime moves
    whenever hometier moves entries in or out, which is not a change of the user's data.
    Everything else (hometier's own notice, staging or conflict folders included) is
    listed, so a leftover shows up as a difference.
    """
    top = os.lstat(root)
    out: dict[str, dict[str, Any]] = {
        ".": {"type": _TYPES[stat.S_IFMT(top.st_mode)], "mode": stat.S_IMODE(top.st_mode)}
    }
    stack = [os.fsencode(root)]
    base = len(os.fsencode(root)) + 1
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = list(it)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            kind = _TYPES[stat.S_IFMT(st.st_mode)]
            rel = os.fsdecode(e.path[base:])
            item: dict[str, Any] = {
                "type": kind,
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
            }
            if kind == "file":
                item["size"] = st.st_size
                item["sha256"] = _sha256(e.path)
            elif kind == "symlink":
                item["target"] = os.fsdecode(os.readlink(e.path))
            elif kind == "dir":
                stack.append(e.path)
            out[rel] = item
    return out


def diff(want: dict[str, Any], got: dict[str, Any], limit: int = 12) -> str:
    """What differs between two manifests, for assertion messages."""
    lines = [f"missing: {k}" for k in sorted(want.keys() - got.keys())]
    lines += [f"extra: {k}" for k in sorted(got.keys() - want.keys())]
    lines += [
        f"differs: {k}: {want[k]} != {got[k]}"
        for k in sorted(want.keys() & got.keys())
        if want[k] != got[k]
    ]
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more or "no difference"


def quarantined(homes: Path) -> list[str]:
    """Entries of the quarantine folder, without hometier's own (``.locks``)."""
    from hometier.lifecycle.context import QUARANTINE_DIR

    q = homes / QUARANTINE_DIR
    return sorted(p.name for p in q.iterdir() if not p.name.startswith(".")) if q.is_dir() else []


def staging_leftovers(homes: Path) -> list[str]:
    """``.hometier-restore-*`` folders anywhere under the homes root (2 levels, the
    quarantine included: restores from the bucket are built there), and restore builds
    (``<key>.<snapshot>.r``) left in the quarantine."""
    found = [p for p in homes.glob(".hometier-restore-*")]
    found += [p for p in homes.glob(".*/.hometier-restore-*")]
    found += [p for p in homes.glob("*/.hometier-restore-*")]
    found += [p for p in homes.glob(".hometier-quarantine/*.r")]
    return sorted(str(p) for p in found)


# --- the command ---------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code} after {self.seconds:.1f}s\nstdout: {self.out}\nstderr: {self.err}"


@dataclass
class Hometier:
    """One hometier setup: homes root, store URL, database URL and config file."""

    root: Path
    store: str
    db: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.homes.mkdir(parents=True, exist_ok=True)
        # These setups have no JupyterHub: say so, or the archiver archives nothing.
        settings = {"Archiver.use_hub": False, **self.settings}
        lines = [f"c.{k} = {v!r}" for k, v in settings.items()]
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def homes(self) -> Path:
        return self.root / "homes"

    @property
    def config(self) -> Path:
        return self.root / "hometier_config.py"

    def home(self, user: str) -> Path:
        return self.homes / user

    def env(self, faults: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("HOMETIER_FAULTS", None)
        env.update(HOMETIER_HOMES=str(self.homes), HOMETIER_STORE=self.store, HOMETIER_DB=self.db)
        if faults:
            env["HOMETIER_FAULTS"] = faults
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hometier.cli.main", "--config", str(self.config), *args]

    def start(self, *args: str, faults: str | None = None) -> subprocess.Popen[str]:
        """Start the real command in a subprocess (its own process group)."""
        return subprocess.Popen(
            self.argv(*args),
            env=self.env(faults),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str, faults: str | None = None, timeout: float = 120.0) -> Result:
        """Run the real command in a subprocess; on timeout it is killed, code ``None``."""
        started = time.monotonic()
        proc = self.start(*args, faults=faults)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise CommandTimeout(args, timeout, out, err) from None
        return Result(proc.returncode, out, err, time.monotonic() - started)

    def cli(self, *args: str) -> Result:
        """Run the command in this process (no fault variable): quick follow-up steps."""
        from hometier.cli.main import main
        from hometier.state import open_database

        opened: list[Any] = []

        def recording_open(url: str, *a: Any, **kw: Any) -> Any:
            db = open_database(url, *a, **kw)
            opened.append(db)
            return db

        saved = {k: os.environ.get(k) for k in ("HOMETIER_HOMES", "HOMETIER_STORE", "HOMETIER_DB")}
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        os.environ.update(self.env())
        try:
            # The verbs never close the database (the process ends); here it goes on.
            with (
                mock.patch("hometier.app.open_database", recording_open),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                try:
                    code = main(["--config", str(self.config), *args])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 2
        finally:
            for db in opened:
                db.dispose()
            root.handlers[:] = handlers
            root.setLevel(level)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - started)

    def states(self) -> dict[str, str]:
        """User → state, from ``hometier status --json``."""
        r = self.cli("status", "--json")
        assert r.code == 0, str(r)
        rows: list[dict[str, str]] = r.json
        return {row["user"]: row["state"] for row in rows}


class CommandTimeout(AssertionError):
    def __init__(self, args: tuple[str, ...], timeout: float, out: str, err: str) -> None:
        super().__init__(
            f"`hometier {' '.join(args)}` did not finish within {timeout:.0f}s (killed); "
            f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}"
        )


# --- the state database, behind hometier's back ---------------------------------------


def set_home_times(db_url: str, state: str, **delta: dt.timedelta) -> int:
    """Move ``claimed_until`` and/or ``state_since`` of every home in ``state`` back by
    the given amounts (``claimed_until=timedelta(hours=2)``); returns rows changed.

    Goes through the models so the SQLite and PostgreSQL time encodings stay right.
    """
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from hometier.state.models import Home

    engine = create_engine(db_url)
    try:
        with Session(engine) as s, s.begin():
            rows = list(s.scalars(select(Home).where(Home.state == state)))
            for home in rows:
                for column, back in delta.items():
                    value = getattr(home, column)
                    if value is not None:
                        setattr(home, column, value - back)
            return len(rows)
    finally:
        engine.dispose()
