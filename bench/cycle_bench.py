"""What one archiver cycle costs on a hub whose homes are mostly idle, and what draining the
backlog costs.

    python bench/cycle_bench.py                     # 5,000 homes, 80% idle, one cycle
    python bench/cycle_bench.py --drain             # ... then cycles until nothing is left
    python bench/cycle_bench.py --drain --max-cycles 5    # stop early (a slow version)
    python bench/cycle_bench.py --homes 500 --json  # smaller, machine-readable

Real parts only: homes of a few files each in a temporary folder on local disk, an SQLite
state database and a local-folder (``file://``) repository, ``use_hub`` False, the real
``run_cycle`` (walks, decisions, archives with verify, the move aside). The cycle's clock
is 60 days ahead of the real one, so files written now look 60 days old against
``inactive_after`` = 30 days. The database knows what earlier cycles and the Hub would
have told it: idle homes' last activity 31–400 days back; of the active ones (20%), half
are recent in the database, half only by a file their owner saved yesterday (found by a
walk).

It reports, with ``uptime``'s load average beside every figure: one dry run (the deciding
part alone), one real cycle with ``max_per_cycle`` = 50 (seconds, homes walked, database
transactions, homes archived, and the seconds spent deciding, archiving, in recovery and
quarantine purge, and discovering homes), and with ``--drain`` the cycles and seconds
until every idle home is archived. It runs whatever ``hometier`` is importable (its file is printed):
to compare with another version, run the bench under that version, e.g. from a checkout
of it with ``PYTHONPATH=that/src``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

AHEAD = dt.timedelta(days=60)
DAY = dt.timedelta(days=1)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_homes(root: Path, homes: int, idle: float, seed: int) -> tuple[list[str], list[str]]:
    """``homes`` small homes (a folder, three files); returns (idle users, active users)."""
    rng = random.Random(seed)
    users = [f"u{i:05d}" for i in range(homes)]
    active = set(rng.sample(users, homes - int(homes * idle)))
    for user in users:
        home = root / user
        (home / "work").mkdir(parents=True)
        (home / "notes.md").write_text(f"# notes of {user}\n" + "x" * rng.randint(50, 2000))
        (home / "work" / "run.py").write_text(f"print({user!r})\n")
        (home / "work" / "data.csv").write_text("a,b\n" + "1,2\n" * rng.randint(1, 200))
    return [u for u in users if u not in active], sorted(active)


def seed_database(lc: Any, idle: list[str], active: list[str], seed: int) -> None:
    from hometier.lifecycle.loop import discover_homes
    from hometier.state import queries

    rng = random.Random(seed)
    discover_homes(lc)
    now = lc.now()
    with lc.db.transaction() as tx:
        for user in idle:
            at = now - dt.timedelta(days=rng.uniform(31, 400))
            queries.record_activity(tx, user, at, "hub")
        for i, user in enumerate(active):
            if i % 2:  # recent by the Hub
                queries.record_activity(tx, user, now - rng.uniform(0.5, 25) * DAY, "hub")
            else:  # old by the Hub, but a file saved yesterday
                queries.record_activity(tx, user, now - rng.uniform(31, 400) * DAY, "hub")
    for i, user in enumerate(active):
        if not i % 2:
            f = lc.layout.path(user) / "notes.md"
            t = (now - DAY).timestamp()
            os.utime(f, (t, t))


PHASES = ("recover", "discover_homes", "archive_claimed", "purge_quarantine")
"""Steps of a cycle timed by wrapping them where the loop calls them (every version has
them); what is left of a cycle's time is gathering facts and deciding."""


class Counters:
    """Walks (``scan_home`` where the loop calls it), database transactions begun, and
    seconds spent in each of ``PHASES``: wall time during which at least one call of it
    runs (archives and walks run in threads with ``--archive-concurrency``)."""

    def __init__(self, lc: Any) -> None:
        from sqlalchemy import event

        from hometier.lifecycle import loop

        self.walks = 0
        self.transactions = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()
        self._running = dict.fromkeys(PHASES, 0)
        self._since = dict.fromkeys(PHASES, 0.0)
        real = loop.scan_home

        def counting(*a: Any, **kw: Any) -> Any:
            with self._lock:
                self.walks += 1
            return real(*a, **kw)

        loop.scan_home = counting  # type: ignore[assignment]
        for name in PHASES:
            setattr(loop, name, self._timed(name, getattr(loop, name)))
        event.listen(lc.db.engine, "begin", self._begin)

    def _timed(self, name: str, real: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            with self._lock:
                if self._running[name] == 0:
                    self._since[name] = time.monotonic()
                self._running[name] += 1
            try:
                return real(*a, **kw)
            finally:
                with self._lock:
                    self._running[name] -= 1
                    if self._running[name] == 0:
                        self.seconds[name] += time.monotonic() - self._since[name]

        return timed

    def _begin(self, conn: Any) -> None:
        with self._lock:
            self.transactions += 1

    def take(self, total: float) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": round(total, 3)}
        out["walks"], out["transactions"] = self.walks, self.transactions
        phases = {k: round(v, 3) for k, v in self.seconds.items()}
        out["deciding_s"] = round(total - sum(self.seconds.values()), 3)
        out["archiving_s"] = phases.pop("archive_claimed")
        out["recover_purge_s"] = round(phases["recover"] + phases["purge_quarantine"], 3)
        out["discover_s"] = phases["discover_homes"]
        self.walks = self.transactions = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import hometier
    from hometier.lifecycle.context import Lifecycle
    from hometier.lifecycle.homes import HomeLayout
    from hometier.lifecycle.loop import run_cycle
    from hometier.lifecycle.policy import Policy
    from hometier.repo import Repository
    from hometier.state import open_database
    from hometier.store import open_store

    work = Path(tempfile.mkdtemp(prefix="cycle-bench-", dir=args.dir))
    out: dict[str, Any] = {
        "hometier": os.path.dirname(hometier.__file__),
        "homes": args.homes,
        "idle_fraction": args.idle,
        "max_per_cycle": args.max_per_cycle,
    }
    try:
        root = work / "homes"
        root.mkdir()
        began = time.monotonic()
        idle, active = write_homes(root, args.homes, args.idle, args.seed)
        ahead = dt.datetime.now(dt.UTC) + AHEAD
        start = time.monotonic()
        db = open_database(f"sqlite:///{work / 'state.db'}")
        lc = Lifecycle(
            db=db,
            repo=Repository.open_or_create(open_store(f"file://{work / 'repo'}"))[0],
            layout=HomeLayout(root),
            policy=Policy(inactive_after=30 * DAY, max_per_cycle=args.max_per_cycle),
            clock=lambda: ahead + dt.timedelta(seconds=time.monotonic() - start),
            use_hub=False,
            workers=2,
            pack_size=4 * 1024 * 1024,
            archive_concurrency=args.archive_concurrency,
        )
        seed_database(lc, idle, active, args.seed)
        out["setup_seconds"] = round(time.monotonic() - began, 1)
        out["idle_homes"] = len(idle)
        counters = Counters(lc)

        t = time.monotonic()
        dry = run_cycle(lc, dry_run=True)
        out["dry_run"] = counters.take(time.monotonic() - t) | {
            "would_archive": sum(d.chosen for d in dry.decisions),
            "load": load(),
        }
        _say(args, "dry run (deciding only)", out["dry_run"])

        cycles: list[dict[str, Any]] = []
        left = len(idle)
        drain_began = time.monotonic()
        while True:
            t = time.monotonic()
            report = run_cycle(lc)
            figures = counters.take(time.monotonic() - t)
            done = sum(r.outcome == "archived" for r in report.results)
            left -= done
            cycles.append(
                figures
                | {"archived": done, "errors": len(report.errors), "idle_left": left}
                | {"load": load()}
            )
            _say(args, f"cycle {len(cycles)}", cycles[-1])
            if report.errors:
                print(report.errors[:3], file=sys.stderr)
            if not args.drain or done == 0 or len(cycles) >= args.max_cycles:
                break
        out["first_cycle"] = cycles[0]
        if args.drain:
            out["drain"] = {
                "cycles": len(cycles),
                "seconds": round(time.monotonic() - drain_began, 1),
                "walks": sum(c["walks"] for c in cycles),
                "transactions": sum(c["transactions"] for c in cycles),
                "deciding_s": round(sum(c["deciding_s"] for c in cycles), 1),
                "archiving_s": round(sum(c["archiving_s"] for c in cycles), 1),
                "recover_purge_s": round(sum(c["recover_purge_s"] for c in cycles), 1),
                "archived": sum(c["archived"] for c in cycles),
                "idle_left": left,
                "finished": left == 0,
                "load": load(),
            }
            _say(args, "drain", out["drain"])
        db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _say(args: argparse.Namespace, what: str, figures: dict[str, Any]) -> None:
    if not args.json:
        print(f"{what}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--homes", type=int, default=5000)
    p.add_argument("--idle", type=float, default=0.8, help="fraction of idle homes")
    p.add_argument("--max-per-cycle", type=int, default=50)
    p.add_argument(
        "--archive-concurrency", type=int, default=1, help="c.Archiver.archive_concurrency"
    )
    p.add_argument("--drain", action="store_true", help="run cycles until no idle home is left")
    p.add_argument("--max-cycles", type=int, default=10_000, help="stop draining after this")
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--dir", default=None, help="where the temporary homes go (local disk)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    # A stopped bench still removes its temporary homes (the ``finally`` in ``run``).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"hometier from {out['hometier']}; {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
