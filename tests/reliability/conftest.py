"""Fixtures of the reliability suite: faults while archiving and restoring.

- ``proxy``: a ``FaultProxy`` in front of the session's SeaweedFS; ``AWS_ENDPOINT_URL``
  points at it for the test (``open_store`` reads it when a store is opened), so every
  store opened during the test goes through it.
- ``site``: a ``Site`` — homes under ``tmp_path/homes`` (or a given folder: a small
  tmpfs), a state database (SQLite by default), a repository under a fresh prefix of the
  real bucket, a ``FakeClock``; ``site.lifecycle()`` builds a ``Lifecycle`` whose store
  retries quickly (``Retry(attempts=8, base=0.01)``).
- ``direct_repo(url)``: the repository opened straight on SeaweedFS (never through the
  proxy): what the assertions read the truth from.
- ``assert_nothing_lost(site, want)``: every home is complete on disk, or the database
  says it is cold (``archived``/``failed`` after archiving) and its latest complete
  snapshot restores manifest-equal from the bucket.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.servers import PgServer, S3Server, start_pg_server
from hometier.engine import restore
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.policy import Policy
from hometier.repo import Repository
from hometier.state import Database, open_database, queries
from hometier.store import open_store
from hometier.store.base import Retry
from integration.crashutil import MiB, diff, make_home, manifest
from integration.lifecycle.conftest import FakeClock
from reliability.faultproxy import FaultProxy

__all__ = ["FakeClock", "MiB", "diff", "make_home", "manifest"]

FAST_RETRY = Retry(attempts=8, base=0.01, cap=0.2)
LONG = os.environ.get("HOMETIER_RELIABILITY_LONG", "").strip() not in ("", "0")
"""``HOMETIER_RELIABILITY_LONG=1``: the long variants (more seeds, bigger homes, more
users); the default stays within CI's budget."""
SEEDS = list(range(1, 21)) if LONG else [1]
"""Seeds of the fault proxy's RNG for the random-weather tests."""
BIG = 24 * MiB if LONG else 3 * MiB
"""Size of the large random file of a test home."""


# --- S3 through the fault proxy ------------------------------------------------------------


@pytest.fixture
def proxy(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    if not s3_server.running:
        s3_server.start_s3()
    px = FaultProxy(s3_server.endpoint, seed=20300115)
    monkeypatch.setenv("AWS_ENDPOINT_URL", px.url)
    try:
        yield px
    finally:
        px.close()


@pytest.fixture
def direct_repo(s3_server: S3Server) -> Callable[[str], Repository]:
    """``direct_repo(url)``: the repository at ``url``, opened on SeaweedFS itself."""

    def open_direct(url: str) -> Repository:
        saved = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = s3_server.endpoint
        try:
            return Repository.open_or_create(open_store(url))[0]
        finally:
            if saved is None:
                os.environ.pop("AWS_ENDPOINT_URL", None)
            else:
                os.environ["AWS_ENDPOINT_URL"] = saved

    return open_direct


# --- a site: homes, database, repository, clock ------------------------------------------


@dataclass
class Site:
    root: Path
    homes: Path
    store_url: str
    db_url: str
    clock: FakeClock = field(default_factory=FakeClock)
    opened: list[Database] = field(default_factory=list)

    def lifecycle(
        self, *, retry: Retry = FAST_RETRY, policy: Policy | None = None, **kw: Any
    ) -> Lifecycle:
        """A new ``Lifecycle`` (its own store and database handles)."""
        db = open_database(self.db_url)
        self.opened.append(db)
        repo = Repository.open_or_create(open_store(self.store_url, retry=retry))[0]
        options: dict[str, Any] = {
            "quarantine_for": dt.timedelta(days=3),
            "workers": 2,
            "pack_size": 1 * MiB,
            "restore_from_quarantine": False,  # restores come from the bucket
        }
        options.update(kw)
        return Lifecycle(
            db=db,
            repo=repo,
            layout=HomeLayout(self.homes),
            policy=policy or Policy(inactive_after=dt.timedelta(days=30)),
            clock=self.clock,
            **options,
        )

    def home(self, user: str) -> Path:
        return self.homes / user

    def make_home(self, user: str, seed: int, *, big: int = BIG, bigs: int = 1) -> Path:
        path = self.home(user)
        make_home(path, seed, big=big, bigs=bigs)
        return path

    def close(self) -> None:
        for db in self.opened:
            db.dispose()
        self.opened.clear()


@pytest.fixture
def site(tmp_path: Path, s3_url: str) -> Iterator[Site]:
    homes = tmp_path / "homes"
    homes.mkdir()
    s = Site(tmp_path, homes, s3_url, f"sqlite:///{tmp_path}/state.db")
    try:
        yield s
    finally:
        s.close()


# --- what must always hold ---------------------------------------------------------------


def only_notice(home: Path) -> bool:
    return home.is_dir() and sorted(os.listdir(home)) == [NOTICE_NAME]


def staging_leftovers(homes: Path) -> list[str]:
    found = list(homes.glob(".hometier-restore-*")) + list(homes.glob("*/.hometier-restore-*"))
    return sorted(str(p) for p in found)


def assert_nothing_lost(
    lc: Lifecycle,
    want: dict[str, Any],
    scratch: Path,
    repo: Repository,
    ignore: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Every home is complete on disk, or cold in the database and restorable from the
    bucket (``repo``, opened directly) manifest-equal (entries named in ``ignore`` left
    out of the comparison). Returns user → state."""

    def cut(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k not in ignore}

    states: dict[str, str] = {}
    for user, expected in want.items():
        try:
            row = queries.get_home(lc.db, user)
            state, cold = row.state, row.is_cold
        except queries.HomeNotFound:
            state, cold = "unknown", False
        states[user] = state
        home = lc.layout.path(user)
        if cold:
            snaps = [s for s in repo.list_snapshots(user) if s.stats.complete]
            assert snaps, f"{user} is {state} (cold) but has no complete snapshot"
            target = scratch / user
            restore(repo, snaps[-1], target, workers=2)
            got, expected = cut(manifest(target)), cut(expected)
            assert got == expected, (
                f"{user} is {state} but its snapshot differs: {diff(expected, got)}"
            )
        else:
            got, expected = cut(manifest(home) if home.is_dir() else {}), cut(expected)
            assert got == expected, (
                f"{user} is {state} but its home is not complete on disk: {diff(expected, got)}"
            )
    return states


# --- filesystems of a given size (root) --------------------------------------------------


@dataclass
class Volume:
    path: Path
    kind: str

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0, name: str = ".filler") -> Path:
        """Write a file that leaves about ``leave`` bytes free (0: until ENOSPC)."""
        filler = self.path / name
        block = b"\0" * (64 * 1024)
        with open(filler, "ab") as f:
            while True:
                room = self.free() - leave
                if room <= 0:
                    break
                try:
                    f.write(block[: max(4096, min(len(block), room))])
                    f.flush()
                except OSError:
                    break
        if leave == 0:
            _top_off(self.path)
        return filler


def _top_off(path: Path) -> None:
    """Use up the last bytes and blocks too (small files until ENOSPC)."""
    for i in range(10_000):
        try:
            with open(path / f".filler-{i}", "wb") as f:
                f.write(b"\0" * 4096)
        except OSError:
            return


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def small_volume(request: pytest.FixtureRequest) -> Iterator[Callable[..., Volume]]:
    """``small_volume(kind, mib)``: a fresh tmpfs or loop-mounted ext4 (no reserved
    blocks) of ``mib`` MiB; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    mounted: list[tuple[Path, Path | None]] = []

    def make(kind: str = "tmpfs", mib: int = 16) -> Volume:
        base = Path(tempfile.mkdtemp(prefix="hometier-vol-"))
        mnt = base / "mnt"
        mnt.mkdir()
        image = None
        if kind == "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(mnt))
        elif kind == "ext4":
            image = base / "fs.img"
            with open(image, "wb") as f:
                f.truncate(mib * MiB)
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
            _run("mount", "-o", "loop", str(image), str(mnt))
        else:
            raise ValueError(kind)
        mounted.append((mnt, image))
        return Volume(mnt, kind)

    try:
        yield make
    finally:
        for mnt, image in reversed(mounted):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
            if image is not None:
                image.unlink(missing_ok=True)
            for p in (mnt, mnt.parent):
                try:
                    p.rmdir()
                except OSError:
                    pass


# --- a PostgreSQL of one's own, to stop and start ----------------------------------------


class OwnPg:
    """A ``PgServer`` this test may stop and start again (same port, same data)."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.running = True

    def stop(self) -> None:
        s = self.server
        s._run(str(s.bin / "pg_ctl"), "-D", str(s.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        self.running = False

    def start(self) -> None:
        s = self.server
        options = (
            f"-c listen_addresses={s.host} -p {s.port} -k {s.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        s._run(
            str(s.bin / "pg_ctl"),
            "-D",
            str(s.data_dir),
            "-l",
            str(s.log_path),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        s.pid = int((s.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        self.running = True


@pytest.fixture
def own_pg() -> Iterator[OwnPg]:
    """A separate PostgreSQL cluster (not the session's), for tests that stop it."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]'")
    from fixtures.servers import ServerUnavailable

    try:
        server = start_pg_server()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    pg = OwnPg(server)
    try:
        yield pg
    finally:
        server.close()
