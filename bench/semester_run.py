"""One policy's semester: the real archiver loop, service, SeaweedFS and PostgreSQL on a
virtual clock; every login, archive, restore and edit of the trace, then every home and
snapshot checked.

What is real: ``lifecycle.loop.run_cycle`` (recovery, discovery, the Hub's activity,
file times, ``select_idle``, archive with verify and compare, the move aside, purge),
``lifecycle.retention.apply_retention`` (forget, then the engine's two-phase prune) once
a virtual day, as ``run_forever`` does after its cycles, and the service's tornado
application (``service.app.make_context``/``make_app``: handlers, HubOAuth, the
``Tracker`` and its restore pool of ``restore_concurrency`` threads) on 127.0.0.1, whose
``POST /api/homes/<user>/restore`` every login to an archived home calls and waits for,
as the spawn hook does. The service runs in this process, on a thread of its own,
because it must read the same virtual clock as the archiver (a ``hometier serve``
process would stamp restores with the wall clock, 100+ days behind, and the archiver
would take the restored homes for idle). What stands in: the Hub (``semester_hub``).

The replay is event-driven: a cycle runs at the hourly grid time when a home may have
become idle (a lower bound from the database and the Hub: activity only moves forward,
so no earlier cycle could archive anything) or a quarantine may be due, and at least
once a virtual day; ``--every-cycle`` runs every hourly cycle instead. Logins starting
within five virtual minutes of each other arrive together (class starts, deadlines),
their restores at once, as concurrent spawns would. The simulator does not call the
service for a login whose home it knows is on the volume (the answer would be immediate);
it checks what it knows against the database every virtual day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import semester_corpus as sc
import semester_edits as se
from semester_hub import FakeHub

REPO = benchlib.REPO
PREFIX = "/services/hometier"
DAY = 86400
BATCH = 300
"""Logins that start within this many virtual seconds arrive together."""

log = logging.getLogger("semester")


class VirtualClock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass(frozen=True)
class PolicySpec:
    inactive_days: float
    quarantine_days: float

    @property
    def label(self) -> str:
        return f"{self.inactive_days:g}d/q{self.quarantine_days:g}d"

    @property
    def slug(self) -> str:
        return f"i{self.inactive_days:g}-q{self.quarantine_days:g}".replace(".", "_")


@dataclass
class Options:
    interval: dt.timedelta = dt.timedelta(hours=1)
    max_per_cycle: int = 50
    archive_concurrency: int = 1
    """``c.Archiver.archive_concurrency``: homes a cycle archives at once."""
    restore_concurrency: int = 8
    workers: int = 4
    every_cycle: bool = False
    keep: bool = False
    prune_every: float = 1.0
    """Days between retention runs (``c.Retention.prune_interval``)."""


# --- servers ------------------------------------------------------------------------------


def start_s3(work: Path) -> Any:
    """``weed mini`` as the tests start it, plus its Prometheus port, like corpus_bench."""
    sys.path.insert(0, str(REPO))
    from tests.fixtures import servers

    class MetricsS3Server(servers.S3Server):
        metrics_port = 0

        def _argv(self) -> list[str]:
            return [
                *super()._argv(),
                f"-metricsPort={self.metrics_port}",
                f"-metricsIp={servers.LOOPBACK}",
            ]

    root = Path(tempfile.mkdtemp(prefix="s3-", dir=work))
    server = MetricsS3Server(
        root=root,
        bucket="semester",
        access_key="hometier-semester",
        secret_key="hometier-semester-secret",
        ports={name: servers.free_port(with_grpc=True) for name in servers._WEED_PORTS},
        weed=servers.find_weed(),
    )
    server.metrics_port = servers.free_port()
    try:
        server.start_s3()
    except BaseException:
        server.close()
        raise
    return server


_METRIC = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+([0-9.e+]+)$")


READ_ONLY = frozenset({"GET", "HEAD", "LIST", "LIST_V2", "OPTIONS"})
"""SeaweedFS request types that cannot change a bucket's objects."""


def scrape(port: int) -> Counter[str]:
    """S3 requests SeaweedFS has answered so far, by type (GET, PUT, POST, LIST, ...)."""
    out: Counter[str] = Counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels.get("type", "?")] += int(float(m.group(2)))
    return out


class ServiceThread:
    """hometier's tornado service (``make_context`` + ``make_app``) on its own thread."""

    def __init__(self, lc: Any, restore_concurrency: int, on_archive: Any) -> None:
        from tornado.httpserver import HTTPServer

        from hometier.service.app import MAX_BODY, make_app, make_context

        self.ctx = make_context(lc, prefix=PREFIX, restore_concurrency=restore_concurrency)
        metrics_archived = lc.on_archive

        def archived(result: Any, seconds: float) -> None:
            metrics_archived(result, seconds)
            on_archive(result, seconds)

        lc.on_archive = archived
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            app = make_app(self.ctx)
            server = HTTPServer(app, max_body_size=MAX_BODY)
            sockets = __import__("tornado.netutil").netutil.bind_sockets(0, "127.0.0.1")
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            self.server = server
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="service", daemon=True)
        self.thread.start()
        ready.wait(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        for pool in (self.ctx.executor, self.ctx.downloads, self.ctx.tracker.executor):
            pool.shutdown(wait=True, cancel_futures=True)


def call(method: str, url: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, method=method, data=b"" if method == "POST" else None,
        headers={"Authorization": f"token {token}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# --- one policy ---------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one policy's replay measured (the report reads ``doc()``)."""

    spec: PolicySpec
    days: list[dict[str, Any]] = field(default_factory=list)
    logins: int = 0
    waits: list[dict[str, Any]] = field(default_factory=list)
    archives: list[dict[str, Any]] = field(default_factory=list)
    cycles: dict[str, int] = field(default_factory=Counter)
    retention: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    restore_checks: dict[str, int] = field(default_factory=Counter)
    final: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=Counter)
    load: list[float] = field(default_factory=list)
    tamper: dict[str, Any] | None = None

    def doc(self) -> dict[str, Any]:
        return {
            "policy": {
                "label": self.spec.label,
                "inactive_days": self.spec.inactive_days,
                "quarantine_days": self.spec.quarantine_days,
            },
            "days": self.days,
            "logins": self.logins,
            "waits": self.waits,
            "archives": self.archives,
            "cycles": dict(self.cycles),
            "retention": self.retention,
            "errors": self.errors,
            "restore_checks": dict(self.restore_checks),
            "final": self.final,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "load": self.load,
            "tamper": self.tamper,
        }


class PolicyRun:
    def __init__(
        self,
        spec: PolicySpec,
        work: Path,
        corpus: sc.Corpus,
        semester: se.Semester,
        trace: Any,
        hub: FakeHub,
        clock: VirtualClock,
        pg: Any,
        opts: Options,
    ) -> None:
        self.spec, self.work, self.corpus, self.sem, self.trace = (
            spec,
            work,
            corpus,
            semester,
            trace,
        )
        self.hub, self.clock, self.pg, self.opts = hub, clock, pg, opts
        self.t0 = dt.datetime.fromtimestamp(semester.t0_ns / 1e9, dt.UTC)
        self.run = Run(spec)
        self.done: Counter[str] = Counter()
        """Sessions applied per user (k of ``manifest_at``)."""
        self.archived: set[str] = set()
        """Homes the simulator knows are archived (checked against the DB daily)."""
        self.expect: dict[str, tuple[str, int]] = {}
        """Snapshot id → (user, sessions applied when it was taken)."""
        self.due = -math.inf
        self._bucket: tuple[list[tuple[str, int]], int, int] | None = None
        """The last listing of the bucket: SeaweedFS's write counts then, bytes, objects."""
        self.restore_pool = ThreadPoolExecutor(64, thread_name_prefix="login")

    # -- set up ----------------------------------------------------------------------------

    def setup(self) -> None:
        from hometier.lifecycle.activity import HubClient
        from hometier.lifecycle.context import Lifecycle
        from hometier.lifecycle.homes import HomeLayout
        from hometier.lifecycle.policy import Policy, Retention
        from hometier.repo import Repository
        from hometier.state import open_database
        from hometier.store import open_store

        root = self.work / f"run-{self.spec.slug}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.root = root
        t = time.monotonic()
        image = root / "homes.img" if self.corpus.volume.image is not None else None
        self.volume = self.corpus.volume.copy(root / "homes", image)
        self.s3 = start_s3(root)
        os.environ.update(self.s3.env())
        self.dbname = f"semester_{self.spec.slug}_{os.getpid()}_{time.monotonic_ns() % 10**6}"
        url = self.pg.create_database(self.dbname)
        self.clock.now = self.t0
        self.hub.reset(
            {
                u.name: self.t0 + dt.timedelta(seconds=u.last_before)
                for u in self.trace.users
                if u.last_before is not None
            }
        )
        self.lc = Lifecycle(
            db=open_database(url),
            repo=Repository.open_or_create(open_store(self.s3.url("hometier")))[0],
            layout=HomeLayout(str(self.volume.path)),
            policy=Policy(
                inactive_after=dt.timedelta(days=self.spec.inactive_days),
                max_per_cycle=self.opts.max_per_cycle,
            ),
            retention=Retention(every=dt.timedelta(days=self.opts.prune_every)),
            clock=self.clock,
            hub=HubClient(self.hub.api_url, self.hub.service_token),
            use_hub=True,
            quarantine_for=dt.timedelta(days=self.spec.quarantine_days),
            workers=self.opts.workers,
            archive_concurrency=self.opts.archive_concurrency,
        )
        self.service = ServiceThread(self.lc, self.opts.restore_concurrency, self._archived)
        self.s3_before = scrape(self.s3.metrics_port)
        self.run.seconds["setup"] += time.monotonic() - t

    def close(self) -> None:
        self.restore_pool.shutdown(wait=True)
        try:
            self.service.close()
        finally:
            self.lc.db.engine.dispose()
            self.s3.close()
            if not self.opts.keep:
                self.volume.destroy()
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                self.volume.unmount()

    # -- callbacks -------------------------------------------------------------------------

    def _archived(self, result: Any, seconds: float) -> None:
        t = (self.clock.now - self.t0).total_seconds()
        self.run.archives.append(
            {
                "t": t,
                "user": result.user,
                "outcome": result.outcome,
                "seconds": round(seconds, 3),
                "bytes": result.bytes,
                "reason": result.reason,
            }
        )
        if result.snapshot:
            self.expect[result.snapshot] = (result.user, self.done[result.user])
        if result.outcome == "archived":
            self.archived.add(result.user)
        elif result.outcome == "failed":
            self.run.errors.append(f"archive {result.user}: {result.reason}")

    # -- the replay ------------------------------------------------------------------------

    def replay(self) -> Run:
        from hometier.lifecycle.loop import run_cycle
        from hometier.lifecycle.retention import apply_retention

        sessions = self.trace.sessions
        end = self.trace.seconds
        step = int(self.opts.interval.total_seconds())
        i, next_day, next_cycle, last_cycle = 0, 0, 0, -math.inf
        started = time.monotonic()
        while True:
            t_login = sessions[i].start if i < len(sessions) else math.inf
            if self.opts.every_cycle:
                t_cycle = next_cycle
            else:
                daily = (math.floor(last_cycle / DAY) + 1) * DAY if last_cycle > -math.inf else 0
                t_cycle = min(max(next_cycle, _grid(self.due, step)), daily)
            t_day = next_day * DAY
            t = min(t_login, t_cycle, t_day)
            if t > end:
                break
            self.clock.now = self.t0 + dt.timedelta(seconds=t)
            if t == t_day:
                if next_day and next_day % max(1, round(self.opts.prune_every)) == 0:
                    tr = time.monotonic()
                    rep = apply_retention(self.lc, self.lc.retention)
                    took = time.monotonic() - tr
                    self.run.seconds["retention"] += took
                    self.run.retention.append(_retention_doc(next_day, rep, took))
                self.sample(next_day)
                next_day += 1
            elif t == t_cycle:
                tc = time.monotonic()
                predicted = t >= _grid(self.due, step)
                report = run_cycle(self.lc)
                took = time.monotonic() - tc
                self.run.seconds["cycles"] += took
                self.run.cycles["run"] += 1
                self.run.cycles["predicted" if predicted else "daily"] += 1
                archived = sum(r.outcome == "archived" for r in report.results)
                if archived and not predicted:
                    self.run.cycles["archived_unpredicted"] += archived
                for e in report.errors:
                    self.run.errors.append(f"cycle at day {t / DAY:.2f}: {e}")
                last_cycle, next_cycle = t, t + step
                self.due = self.lower_bound(t)
                if self.run.cycles["run"] % 25 == 0:
                    log.info(
                        "%s: cycle %d at day %.2f, %d archives, %.0f s",
                        self.spec.label, self.run.cycles["run"], t / DAY,
                        len(self.run.archives), time.monotonic() - started,
                    )  # fmt: skip
            else:
                batch = []
                while i < len(sessions) and sessions[i].start < t + BATCH:
                    batch.append(sessions[i])
                    i += 1
                self.logins(t, batch)
            if (next_day % 7 == 0 and t == t_day) or t > end:
                log.info(
                    "%s: day %d, %d archives, %d restores, %.0f s",
                    self.spec.label, next_day - 1, len(self.run.archives),
                    len(self.run.waits), time.monotonic() - started,
                )  # fmt: skip
        self.run.cycles["hourly_in_period"] = end // step + 1
        self.run.seconds["replay"] += time.monotonic() - started
        return self.run

    def home_rows(self, *columns: str) -> list[Any]:
        """Every home's ``columns`` as tuples: the harness asks after every cycle and
        every day, and 2,000 ORM objects each time cost more than the answer."""
        from sqlalchemy import select

        from hometier.state.models import Home

        with self.lc.db.engine.connect() as conn:
            return list(conn.execute(select(*(getattr(Home, c) for c in columns))).all())

    def lower_bound(self, now: float) -> float:
        """The earliest virtual time (seconds from T0) at which a cycle could archive a
        home or purge a quarantine: activity only moves forward."""
        idle = self.spec.inactive_days * DAY
        keep = self.spec.quarantine_days * DAY
        due = math.inf
        rows = self.home_rows("user", "state", "last_activity", "quarantine_path", "archived_at")
        for h in rows:
            if h.state == "active":
                hub = self.hub.last_activity(h.user, self.clock.now)
                known = [x for x in (h.last_activity, hub) if x is not None]
                if not known:
                    return now  # nothing known: it is idle now
                due = min(due, (max(known) - self.t0).total_seconds() + idle)
            elif h.state == "archived" and h.quarantine_path and h.archived_at is not None:
                due = min(due, (h.archived_at - self.t0).total_seconds() + keep)
            elif h.state not in ("archived",):
                return now
        return due

    def logins(self, t: float, batch: list[Any]) -> None:
        tl = time.monotonic()
        for s in batch:
            self.hub.start_session(
                s.user,
                self.t0 + dt.timedelta(seconds=s.start),
                self.t0 + dt.timedelta(seconds=s.end),
            )
        self.run.logins += len(batch)
        waiting = sorted({s.user for s in batch if s.user in self.archived})
        if waiting:
            futures = {u: self.restore_pool.submit(self.restore, u) for u in waiting}
            for user, fut in futures.items():
                got = fut.result()
                got["t"] = t
                self.run.waits.append(got)
                if got["state"] == "done":
                    self.archived.discard(user)
                    self.check_restored(user, got)
                else:
                    self.run.errors.append(f"restore of {user} at day {t / DAY:.2f}: {got}")
        for s in batch:
            edits = self.sem.edits[s.user]
            k = self.done[s.user]
            edit = edits[k]
            if edit.start != s.start:
                raise RuntimeError(f"edits of {s.user} out of step at {s.start}")
            home = os.fsencode(self.volume.path / s.user)
            se.apply_ops(home, edit.ops, self.sem.blobs, s.user, self.corpus.template)
            self.done[s.user] += 1
        self.due = min(self.due, t + self.spec.inactive_days * DAY)
        self.run.seconds["logins"] += time.monotonic() - tl

    def restore(self, user: str) -> dict[str, Any]:
        """One login's wait, as the spawn hook waits: POST the restore, poll until done."""
        token = self.hub.login_token(user)
        url = f"{self.service.url}/api/homes/{user}/restore"
        begin = time.monotonic()
        status, doc = call("POST", url, token)
        while status in (200, 202) and doc.get("state") == "running":
            time.sleep(0.02)
            status, doc = call("GET", url, token)
        waited = time.monotonic() - begin
        result = doc.get("result") or {} if isinstance(doc, dict) else {}
        started, finished = (doc or {}).get("started"), (doc or {}).get("finished")
        return {
            "user": user,
            "state": doc.get("state") if isinstance(doc, dict) else f"HTTP {status}",
            "status": status,
            "wait": round(waited, 4),
            "restore": round(finished - started, 4) if started and finished else None,
            "source": result.get("source"),
            "bytes": result.get("bytes") or 0,
            "files": result.get("files") or 0,
            "message": (doc or {}).get("message") if isinstance(doc, dict) else None,
        }

    def check_restored(self, user: str, got: dict[str, Any]) -> None:
        """What the login found equals what the user had (the version after their last
        session): every entry, attribute and byte."""
        tc = time.monotonic()
        want = self.sem.manifest_at(self.corpus.manifests.get(user), user, self.done[user])
        have = benchlib.manifest(self.volume.path / user)
        diff = benchlib.compare(want, have)
        self.run.restore_checks["homes"] += 1
        self.run.restore_checks["entries"] += len(want)
        if not diff["ok"]:
            n = sum(diff["differences"].values())
            self.run.restore_checks["differences"] += n
            self.run.errors.append(f"restored {user} differs: {diff['examples'][:3]}")
        self.run.seconds["checks"] += time.monotonic() - tc

    # -- the end ---------------------------------------------------------------------------

    def verify(self, record: bool = True) -> dict[str, Any]:
        """Every home and every snapshot against the simulator's expectation.

        A home on the volume must be its final version; an archived home's recorded
        snapshot must be its final version (and its quarantine, while kept, too); every
        snapshot in the bucket must be exactly the version it was taken of. A file
        *lost* is an expected file that hometier holds nowhere as it should be."""
        import semester_verify as sv
        from hometier.state import queries

        tv = time.monotonic()
        homes = {h.user: h for h in queries.list_homes(self.lc.db)}
        f: dict[str, Any] = Counter()
        for key in ("files_lost", "home_differences", "snapshot_differences",
                    "snapshot_unexpected", "quarantine_differences"):  # fmt: skip
            f[key] = 0
        examples: list[str] = []
        users = sorted(set(self.corpus.manifests) | {u for u, k in self.done.items() if k})
        for user in users:
            k = len(self.sem.edits.get(user, []))
            if self.done[user] != k:
                self.run.errors.append(f"{user}: {self.done[user]} of {k} sessions applied")
            want = self.sem.manifest_at(self.corpus.manifests.get(user), user, k)
            files = sum(e[0] == "file" for e in want.values())
            f["homes"] += 1
            f["expected_files"] += files
            h = homes.get(user)
            state = h.state if h is not None else "unknown"
            f[f"state_{state}"] += 1
            if state == "active":
                diff = benchlib.compare(want, benchlib.manifest(self.volume.path / user))
                f["homes_on_volume_checked"] += 1
            elif state == "archived" and h is not None:
                exp = self.expect.get(h.archived_snapshot or "")
                ok = exp == (user, k)
                f["archived_homes_checked"] += 1
                diff = {"ok": ok, "differences": {} if ok else {"snapshot": files},
                        "examples": [] if ok else [f"recorded snapshot is of {exp}"]}  # fmt: skip
                if h.quarantine_path and os.path.isdir(h.quarantine_path):
                    f["quarantines_checked"] += 1
                    q = benchlib.compare(want, benchlib.manifest(Path(h.quarantine_path)))
                    if not q["ok"]:
                        f["quarantine_differences"] += sum(q["differences"].values())
                        examples.extend(f"{user} quarantine: {e}" for e in q["examples"][:2])
            else:
                diff = {"ok": False, "differences": {f"state {state}": files}, "examples": []}
            if not diff["ok"]:
                n = sum(diff["differences"].values())
                f["home_differences"] += n
                lost = diff["differences"].get("missing", 0) + diff["differences"].get(
                    "snapshot", 0
                )
                f["files_lost"] += lost + sum(
                    v for kind, v in diff["differences"].items() if kind.startswith("file ")
                )
                examples.extend(f"{user}: {e}" for e in diff["examples"][:2])
        snaps = self.lc.repo.list_snapshots()
        memo: dict[tuple[Any, ...], str] = {}
        for snap, have in sv.snapshot_manifests(self.lc.repo, snaps, memo):
            f["snapshots"] += 1
            exp = self.expect.get(snap.id)
            if exp is None or exp[0] != snap.user:
                f["snapshot_unexpected"] += 1
                examples.append(f"snapshot {snap.id[:12]} of {snap.user}: not made by a cycle")
                continue
            want = self.sem.manifest_at(self.corpus.manifests.get(exp[0]), exp[0], exp[1])
            f["snapshot_entries"] += len(want)
            diff = benchlib.compare(want, have)
            if not diff["ok"]:
                f["snapshot_differences"] += sum(diff["differences"].values())
                examples.extend(f"snapshot of {snap.user}: {e}" for e in diff["examples"][:2])
        f["distinct_contents_read"] = len(memo)
        result = {**f, "examples": examples[:20]}
        self.run.seconds["verify"] += time.monotonic() - tv
        if not record:
            return result
        self.run.final = result
        if f["home_differences"] or f["snapshot_differences"] or f["snapshot_unexpected"]:
            self.run.errors.append(f"final check: {examples[:5]}")
        return result

    def tamper(self) -> dict[str, Any]:
        """Prove the final check can fail: change one byte of a file (same size, same
        mtime) in one home on the volume and the mode of a file in another, check
        again, and put both back. Returns what the second check found."""
        from hometier.state import queries

        active = sorted(h.user for h in queries.list_homes(self.lc.db) if h.state == "active")
        touched = []
        for user in active:
            m = self.sem.manifest_at(self.corpus.manifests.get(user), user, self.done[user])
            files = sorted(r for r, e in m.items() if e[0] == "file" and e[6] > 0 and e[8] is None)
            if files:
                touched.append(self.volume.path / os.fsdecode(user) / os.fsdecode(files[0]))
            if len(touched) == 2:
                break
        if len(touched) < 2:
            return {"skipped": "fewer than two homes on the volume"}
        path, other = touched
        st = os.lstat(path)
        with open(path, "r+b") as fh:
            first = fh.read(1)
            fh.seek(0)
            fh.write(bytes([first[0] ^ 0xFF]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        mode = os.lstat(other).st_mode
        os.chmod(other, (mode & 0o7777) ^ 0o004)
        try:
            found = self.verify(record=False)
        finally:
            with open(path, "r+b") as fh:
                fh.write(first)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(other, mode & 0o7777)
        found["tampered"] = [str(path), str(other)]
        self.run.tamper = found
        return found

    # -- samples ---------------------------------------------------------------------------

    def sample(self, day: int) -> None:
        ts = time.monotonic()
        homes = self.home_rows("user", "state", "quarantine_path")
        states = Counter(h.state for h in homes)
        db_archived = {h.user for h in homes if h.state == "archived"}
        if db_archived != self.archived:
            self.run.errors.append(
                f"day {day}: the simulator's archived homes differ from the database's "
                f"({len(self.archived ^ db_archived)} homes)"
            )
            self.archived = db_archived
        stats = self.lc.repo.store.stats.snapshot()
        s3 = scrape(self.s3.metrics_port) - self.s3_before
        # The bucket is listed again only if SeaweedFS answered a request that can change
        # it since the last listing (its own counters, whoever sent it): a LIST of every
        # key walks thousands of folders in SeaweedFS, on the days nothing was written too.
        writes = sorted((k, v) for k, v in s3.items() if k not in READ_ONLY)
        if self._bucket is None or self._bucket[0] != writes:
            objects = list(self.lc.repo.store.list(""))
            self._bucket = (writes, sum(o.size for o in objects), len(objects))
            self.run.cycles["bucket_listings"] += 1
        _, bucket_bytes, bucket_objects = self._bucket
        self.run.days.append(
            {
                "day": day,
                "posix_used": self.volume.used(),
                "quarantined": sum(1 for h in homes if h.quarantine_path),
                "states": dict(states),
                "bucket_bytes": bucket_bytes,
                "bucket_objects": bucket_objects,
                "store_requests": stats["requests"],
                "store_bytes": stats["bytes"],
                "s3_requests": dict(s3),
            }
        )
        self.run.load.append(os.getloadavg()[0])
        self.run.seconds["samples"] += time.monotonic() - ts


def _grid(t: float, step: int) -> float:
    """The first hourly (``step``) cycle time at or after ``t``."""
    if t == math.inf:
        return math.inf
    return 0 if t <= 0 else math.ceil(t / step) * step


def _retention_doc(day: int, rep: Any, seconds: float) -> dict[str, Any]:
    p = rep.prune
    return {
        "day": day,
        "seconds": round(seconds, 3),
        "prune_skipped": rep.skipped is not None,
        "forgotten": sum(len(v) for v in rep.forgotten.values()),
        "packs_marked": getattr(p, "packs_marked", 0),
        "packs_deleted": getattr(p, "packs_deleted", 0),
        "bytes_deleted": getattr(p, "bytes_deleted", 0),
    }
