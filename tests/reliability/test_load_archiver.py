"""Load: the archiver over 5,000 homes — cycle time and peak memory, and exactly the right
homes archived.

5,000 tiny homes (three entries, a few hundred bytes) on the homes volume, on PostgreSQL
and SeaweedFS, in a mix a hub of that size has:

- most are in use: half of them known to the database with recent activity (what the
  Hub reported), half only on the volume with recent file times — the first cycle
  registers and scans those;
- 5% are exempt (half of those look idle);
- some were archived before (a real archive each);
- some are idle: a few only by their file times, the rest by the activity the database
  holds (31 days and more, one hour apart, so the order is known).

Each cycle is ``hometier --json serve --once`` in a subprocess — the real command, with
the archiver's clock 60 days ahead (the file change times of freshly written homes are
"now", and only the clock can age them; ``utcnow`` is wrapped, nothing else) — so that its
peak resident memory is that process's own (``VmHWM``, sampled until it exits). A baseline is
the same command over an empty volume and database. Cycles run until no idle home is
left: in CI two (the first archives ``max_per_cycle`` = 10 of 11 idle homes, the second,
with every home known, the last one); the long variant goes on to a cycle that must find
nothing to do (the steady state).

What must hold: every cycle archives exactly the oldest idle homes, at most
``max_per_cycle``; over the cycles exactly the idle homes are archived — no active, exempt
or already archived home is touched; nothing is lost (``assert_nothing_lost`` over all
5,000: the hot homes byte-identical on disk, the cold ones restored from the bucket
manifest-equal); no cycle reports an error. Time and memory are printed and written to
``test-artifacts/load/archiver.json``; only generous sanity bounds are asserted.
``HOMETIER_LOAD_LONG=1``: 150 idle homes and ``max_per_cycle = 50`` (three cycles, then
the steady one), 100 archived before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.servers import PgServer
from hometier.lifecycle.cycle import archive_home
from hometier.state import queries
from reliability.conftest import assert_nothing_lost, manifest
from reliability.loadlib import LONG, in_process_lifecycle, mark, write_report

pytestmark = [pytest.mark.s3, pytest.mark.postgres, pytest.mark.slow]

HOMES = 5000
EXEMPT = 250
ARCHIVED_BEFORE = 100 if LONG else 10
IDLE_BY_FILES = 10 if LONG else 4
IDLE_BY_DB = 140 if LONG else 7
MAX_PER_CYCLE = 50 if LONG else 10
AHEAD = dt.timedelta(days=60)
"""How far ahead of the real clock the cycles' clock runs."""
INACTIVE_AFTER = dt.timedelta(days=30)
MEMORY_BOUND = 300 * 1024 * 1024
CYCLE_BOUND = 300.0
"""Seconds: a sanity bound for one cycle on a busy 2-core machine, not a target."""

CONFIG = f"""
c.Archiver.inactive_after = "30d"
c.Archiver.max_per_cycle = {MAX_PER_CYCLE}
c.Archiver.quarantine_for = "3d"
c.Retention.prune_interval = "0"
"""

CYCLE = """
import datetime as dt, sys
import hometier.app
from hometier.cli import lifecycle_cmds
from hometier.cli.main import main
from hometier.lifecycle.context import utcnow

ahead = dt.timedelta(seconds=float(sys.argv[1]))
build = hometier.app.make_lifecycle

def make_lifecycle(*args, **kwargs):
    lc = build(*args, **kwargs)
    lc.clock = lambda: utcnow() + ahead
    return lc

# The verbs import it when they run (or, in older trees, when their module loads).
hometier.app.make_lifecycle = make_lifecycle
if hasattr(lifecycle_cmds, "make_lifecycle"):
    lifecycle_cmds.make_lifecycle = make_lifecycle
sys.exit(main(sys.argv[2:]))
"""
"""``hometier ARGS`` with the lifecycle's clock ``argv[1]`` seconds ahead."""


@dataclass
class Mix:
    active_db: list[str] = field(default_factory=list)
    active_files: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    idle_files: list[str] = field(default_factory=list)
    idle_db: list[str] = field(default_factory=list)
    """Oldest activity first."""

    @property
    def idle(self) -> list[str]:
        return self.idle_files + self.idle_db


@dataclass
class Cycle:
    seconds: float
    cpu: float
    """User + system CPU seconds of the process."""
    max_rss: int
    """Bytes (the cycle's ``VmHWM``)."""
    code: int
    report: dict[str, Any]
    stderr: str

    @property
    def archived(self) -> list[str]:
        return [r["user"] for r in self.report["results"] if r["outcome"] == "archived"]

    @property
    def chosen(self) -> list[str]:
        return [d["user"] for d in self.report["decisions"] if d["chosen"]]


def _env(homes: Path, store: str, db: str) -> dict[str, str]:
    env = dict(os.environ, HOMETIER_HOMES=str(homes), HOMETIER_STORE=store, HOMETIER_DB=db)
    for name in ("HOMETIER_FAULTS", "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"):
        env.pop(name, None)
    env.pop("HOMETIER_HUB_TOKEN", None)
    return env


def _vm_hwm(pid: int) -> int:
    """The peak RSS of ``pid``'s own memory since its exec (``VmHWM``), in bytes; 0 once
    it is gone. ``ru_maxrss`` from ``wait4`` cannot be used: Linux carries the RSS of the
    process that forked it (this test run, hundreds of MB late in a full suite) into it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_cycle_process(env: dict[str, str], cwd: Path, config: Path) -> Cycle:
    """One ``hometier --json serve --once`` with the clock ``AHEAD``; its wall time, CPU
    (``wait4`` on exactly that child) and its own peak RSS (``VmHWM``, read every 20 ms
    until it exits)."""
    out, err = cwd / "cycle.out", cwd / "cycle.err"
    argv = [sys.executable, "-c", CYCLE, str(AHEAD.total_seconds())]
    argv += ["--config", str(config), "--json", "serve", "--once"]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fo, stderr=fe)
        peak = 0
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, _vm_hwm(proc.pid))
                time.sleep(0.02)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = err.read_text(errors="replace")
    try:
        report = json.loads(out.read_text())
    except ValueError:
        raise AssertionError(
            f"the cycle printed no JSON (exit {proc.returncode}):\n{text}"
        ) from None
    return Cycle(
        seconds,
        usage.ru_utime + usage.ru_stime,
        peak,
        proc.returncode,
        report,
        text,
    )


def _tiny_home(path: Path, user: str, mtime_ns: int) -> None:
    (path / "work").mkdir(parents=True)
    (path / "notes.txt").write_text(f"{user}: {mark(user)}\n")
    (path / "work" / "run.py").write_text(f"print({user!r})\n")
    for p in (path / "work" / "run.py", path / "work", path / "notes.txt", path):
        os.utime(p, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def empty_pg_url(pg_server: PgServer) -> Iterator[str]:
    """A second empty database of the session's PostgreSQL (for the baseline)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def _populate(tmp_path: Path, env: dict[str, str]) -> tuple[Mix, dict[str, Any], float]:
    """Write the homes and the database's knowledge of them; returns the mix, every
    home's manifest, and the seconds the database part took."""
    homes = Path(env["HOMETIER_HOMES"])
    users = [f"u{i:04d}" for i in range(HOMES)]
    rng = random.Random(5000)
    order = users[:]
    rng.shuffle(order)
    mix = Mix()
    cut = 0
    for name, count in (
        ("exempt", EXEMPT),
        ("archived", ARCHIVED_BEFORE),
        ("idle_files", IDLE_BY_FILES),
        ("idle_db", IDLE_BY_DB),
    ):
        getattr(mix, name).extend(order[cut : cut + count])
        cut += count
    rest = order[cut:]
    mix.active_db, mix.active_files = rest[: len(rest) // 2], rest[len(rest) // 2 :]

    real_now = dt.datetime.now(dt.UTC)
    then = real_now + AHEAD  # "now" for the cycles
    day_ns = 86400 * 10**9
    old_ns = int((real_now - dt.timedelta(days=400)).timestamp() * 1e9)
    recent_files = {
        u: int((then - dt.timedelta(days=rng.uniform(0.5, 25))).timestamp() * 1e9)
        for u in mix.active_files
    }
    for i, user in enumerate(users):
        _tiny_home(homes / user, user, recent_files.get(user, old_ns + i * day_ns // 1000))
    want = {user: manifest(homes / user) for user in users}

    began = time.monotonic()
    lc = in_process_lifecycle(env, quarantine_for="3d")
    try:
        # What earlier cycles and the Hub told the database, in one transaction.
        with lc.db.transaction() as tx:
            for user in mix.active_db + mix.exempt + mix.archived + mix.idle_db:
                queries.get_or_create_home(tx, user, str(homes / user), real_now, actor="test")
            for user in mix.active_db:
                at = then - dt.timedelta(days=rng.uniform(0.5, 25))
                queries.record_activity(tx, user, at, "hub")
            for j, user in enumerate(mix.exempt):
                ago = dt.timedelta(days=100) if j % 2 else dt.timedelta(days=2)
                queries.record_activity(tx, user, then - ago, "hub")
                queries.set_exempt(tx, user, True, "load test", "test", real_now)
            # Idle by the database: 31 days and more, one hour apart, oldest first.
            n = len(mix.idle_db)
            for j, user in enumerate(mix.idle_db):
                at = then - INACTIVE_AFTER - dt.timedelta(days=1, hours=n - j)
                queries.record_activity(tx, user, at, "hub")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda u: archive_home(lc, u), mix.archived))
        assert [r.outcome for r in results] == ["archived"] * len(mix.archived), results[:3]
    finally:
        lc.db.dispose()
    return mix, want, time.monotonic() - began


def test_the_archiver_over_5000_homes(
    tmp_path: Path, s3_url: str, pg_url: str, empty_pg_url: str
) -> None:
    config = tmp_path / "hometier_config.py"
    config.write_text(CONFIG)
    (tmp_path / "homes").mkdir()
    (tmp_path / "empty-homes").mkdir()
    homes = tmp_path / "homes"
    env = _env(homes, s3_url, pg_url)

    # Baseline: the same command over nothing (interpreter, imports, migrations, a cycle).
    baseline = run_cycle_process(
        _env(tmp_path / "empty-homes", s3_url + "-empty", empty_pg_url), tmp_path, config
    )
    assert baseline.code == 0, baseline.stderr

    mix, want, populated_in = _populate(tmp_path, env)
    idle_left = mix.idle_files + mix.idle_db  # the order select_idle must follow
    cycles: list[Cycle] = []
    archived: list[str] = []
    # Cycles until no idle home is left; the long variant runs one more, which must find
    # nothing to do (the steady state).
    rounds = -(-len(mix.idle) // MAX_PER_CYCLE) + (1 if LONG else 0)
    for n in range(1, rounds + 1):
        cycle = run_cycle_process(env, tmp_path, config)
        cycles.append(cycle)
        assert cycle.code == 0, f"cycle {n} exited {cycle.code}: {cycle.stderr[-3000:]}"
        assert cycle.report["errors"] == [], cycle.report["errors"]
        # Exactly the oldest idle homes, at most max_per_cycle of them. The few idle only
        # by their files are the oldest (their change time is 60 days back); among them
        # the order is whatever their change times say, so they are compared as a set.
        expect = idle_left[:MAX_PER_CYCLE]
        assert len(cycle.chosen) == len(expect) <= MAX_PER_CYCLE, (n, cycle.chosen)
        assert set(cycle.chosen) == set(expect), (
            f"cycle {n} chose {sorted(set(cycle.chosen) - set(expect))[:10]} "
            f"instead of {sorted(set(expect) - set(cycle.chosen))[:10]}"
        )
        assert sorted(cycle.archived) == sorted(expect), (n, cycle.report["results"][:5])
        decided = {d["user"]: d["reason"] for d in cycle.report["decisions"]}
        later = {decided[u] for u in idle_left[MAX_PER_CYCLE:]}
        assert later <= {"over max_per_cycle; next cycle"}, later
        archived += cycle.archived
        idle_left = idle_left[len(expect) :]
    assert not idle_left and sorted(archived) == sorted(mix.idle), (
        "not exactly the idle homes were archived"
    )
    if LONG:
        assert not cycles[-1].archived, "the steady cycle archived something"

    # Nothing else was touched: reasons, states, snapshots.
    decisions = {d["user"]: d for d in cycles[-1].report["decisions"]}
    assert len(decisions) == HOMES, len(decisions)
    before_last = sorted(set(mix.archived + mix.idle) - set(cycles[-1].archived))
    reasons = {
        "exempt": {decisions[u]["reason"] for u in mix.exempt},
        "archived": {decisions[u]["reason"] for u in before_last},
    }
    assert reasons == {"exempt": {"exempt"}, "archived": {"state is archived"}}, reasons
    assert all(decisions[u]["reason"].startswith("active ") for u in mix.active_db), "active_db"
    assert all(decisions[u]["reason"].startswith("active ") for u in mix.active_files), "files"

    lc = in_process_lifecycle(env, quarantine_for="3d")
    try:
        states = {h.user: h.state for h in queries.list_homes(lc.db)}
        cold = set(mix.idle) | set(mix.archived)
        assert {u for u, s in states.items() if s == "archived"} == cold
        assert {u for u, s in states.items() if s != "archived"} == set(want) - cold
        for user in mix.archived:
            assert len(lc.repo.list_snapshots(user)) == 1, f"{user} was archived again"
        verify_began = time.monotonic()
        # The cold homes restore manifest-equal from the bucket; the hot ones (their
        # state read above, one query for all) are byte-identical on disk.
        scratch = tmp_path / "scratch"
        seen = assert_nothing_lost(lc, {u: want[u] for u in sorted(cold)}, scratch, lc.repo)
        assert set(seen.values()) == {"archived"}, seen
        changed = [u for u in sorted(set(want) - cold) if manifest(homes / u) != want[u]]
        assert not changed, f"hot homes changed on disk: {changed[:10]}"
        verified_in = time.monotonic() - verify_began
    finally:
        lc.db.dispose()

    # Figures.
    def fig(c: Cycle) -> dict[str, Any]:
        return {
            "seconds": round(c.seconds, 2),
            "cpu_s": round(c.cpu, 2),
            "max_rss_mb": round(c.max_rss / 2**20, 1),
            "archived": len(c.archived),
            "chosen": len(c.chosen),
        }

    last = cycles[-1]
    report: dict[str, Any] = {
        "homes": HOMES,
        "mix": {
            "active_known": len(mix.active_db),
            "active_files_only": len(mix.active_files),
            "exempt": len(mix.exempt),
            "archived_before": len(mix.archived),
            "idle": len(mix.idle),
        },
        "max_per_cycle": MAX_PER_CYCLE,
        "database": "postgresql",
        "store": "s3 (SeaweedFS)",
        "populate_db_s": round(populated_in, 2),
        "baseline_empty": fig(baseline),
        "cycles": [fig(c) for c in cycles],
        "first_cycle": fig(cycles[0]),
        "last_cycle": fig(last),
        "last_cycle_is_steady": not last.archived,
        "verify_nothing_lost_s": round(verified_in, 2),
    }
    path = write_report("archiver", report)
    first = report["first_cycle"]
    print(
        f"\narchiver over {HOMES} homes (max_per_cycle {MAX_PER_CYCLE}): "
        + "; ".join(
            f"cycle {i + 1} {c.seconds:.1f} s ({c.cpu:.1f} s CPU), {c.max_rss / 2**20:.0f} MB, "
            f"{len(c.archived)} archived"
            for i, c in enumerate(cycles)
        )
        + f"\nbaseline (empty volume and database) {baseline.seconds:.1f} s, "
        f"{baseline.max_rss / 2**20:.0f} MB; first cycle {first['seconds']} s / "
        f"{first['max_rss_mb']} MB, last ({'steady' if not last.archived else 'every home known'})"
        f" {last.seconds:.1f} s / {last.max_rss / 2**20:.0f} MB -> {path}"
    )
    for i, c in enumerate(cycles):
        assert c.max_rss < MEMORY_BOUND, f"cycle {i + 1} peaked at {c.max_rss / 2**20:.0f} MB"
        assert c.seconds < CYCLE_BOUND, f"cycle {i + 1} took {c.seconds:.0f} s"
