#!/usr/bin/env python3
"""What a ``prune`` costs when most snapshots were already there at the last prune.

Builds a repository (a local folder, or SeaweedFS with ``--s3``) of ``--users`` small
homes with ``--snapshots`` incremental snapshots each (a few files edited, one added and
one deleted between snapshots; a shared course folder in every home), then times the
real ``hometier.engine.prune.prune`` (what ``lifecycle.retention.apply_retention``
calls):

1. *cold*: nothing cached locally but the index cache (as after a first start);
2. *warm*: after ``--new`` users took one more snapshot each and as many old snapshots
   were forgotten (what a daily retention run sees);
3. *again*: one more prune with nothing new;
4. *nocache*: the same prune with the summary cache off (``summaries=False``: every
   snapshot's trees walked, as before the cache).

Each line gives the wall time, the store's GET requests and bytes, the process's peak
RSS and ``uptime``'s load average. ``--profile`` prints a cProfile of the cold and warm
prunes (py-spy is not installed here).

    python3 bench/prune_bench.py                       # 200 users x 6 snapshots
    python3 bench/prune_bench.py --users 400 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import inspect
import io
import os
import pstats
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from hometier.engine import backup  # noqa: E402
from hometier.engine.prune import forget, prune  # noqa: E402
from hometier.repo import Repository  # noqa: E402
from hometier.store import open_store  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_home(root: Path, rng: random.Random, files: int, course: Path) -> None:
    """A small home: ``files`` files of 200 B-6 KB in three levels of folders, and a
    copy of the shared course folder (identical blobs in every home)."""
    shutil.copytree(course, root / "course")
    for i in range(files):
        d = root / f"p{i % 5}" / f"s{i % 4}" / f"t{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_bytes(rng.randbytes(rng.randrange(200, 6000)))


def edit_home(root: Path, rng: random.Random, step: int) -> None:
    """What a session does: edit 3 files, add one, delete one."""
    files = sorted(p for p in root.rglob("f*.txt"))
    for p in rng.sample(files, min(3, len(files))):
        p.write_bytes(rng.randbytes(rng.randrange(200, 6000)))
    (root / "p0" / f"new-{step}.txt").write_bytes(rng.randbytes(3000))
    victim = rng.choice(files)
    if victim.exists():
        victim.unlink()


def build(args: argparse.Namespace, work: Path, url: str, cache: Path) -> Repository:
    rng = random.Random(args.seed)
    course = work / "course"
    for i in range(args.course_files):
        d = course / f"week{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"lab{i}.ipynb").write_bytes(rng.randbytes(rng.randrange(500, 8000)))
    repo = Repository.create(open_store(url), cache_dir=str(cache))
    homes = work / "homes"
    t0 = time.perf_counter()
    for u in range(args.users):
        home = homes / f"u{u:04d}"
        make_home(home, random.Random(f"{args.seed}-{u}"), args.files, course)
        parent = None
        for k in range(args.snapshots):
            if k:
                edit_home(home, random.Random(f"{args.seed}-{u}-{k}"), k)
            parent = backup(repo, home, user=f"u{u:04d}", parent=parent, workers=2)
        if u % 50 == 49:
            print(f"  built {u + 1} users ({time.perf_counter() - t0:.0f} s)", flush=True)
    return repo


def measured(
    label: str, repo: Repository, now: dt.datetime, profile: bool, summaries: bool = True
) -> dict[str, Any]:
    repo.store.stats.__init__()  # type: ignore[misc]
    prof = cProfile.Profile() if profile else None
    threads: list[cProfile.Profile] = []

    def in_thread(*_a: Any) -> None:
        # Worker threads (fetches, decoding) get a profiler each, merged below.
        tp = cProfile.Profile()
        threads.append(tp)
        tp.enable()

    by_prefix: dict[str, int] = {}
    store = repo.store
    get, get_ranges = type(store).get, type(store).get_ranges

    def counted(fn: Any) -> Any:
        def call(key: str, *a: Any, **kw: Any) -> Any:
            top = key.split("/", 1)[0]
            by_prefix[top] = by_prefix.get(top, 0) + 1
            return fn(store, key, *a, **kw)

        return call

    store.get = counted(get)  # type: ignore[method-assign]
    store.get_ranges = counted(get_ranges)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    if prof:
        threading.setprofile(in_thread)
        prof.enable()
    # Without ``summaries`` (hometier before the cache) every prune walks everything.
    kw = {"summaries": summaries} if "summaries" in inspect.signature(prune).parameters else {}
    report = prune(repo, now=now, **kw)
    walked = getattr(report, "snapshots_walked", report.snapshots)
    if prof:
        prof.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    del store.get, store.get_ranges
    s = repo.store.stats.snapshot()
    gets = s["requests"].get("get", 0) + s["requests"].get("get_range", 0)
    got = s["bytes"].get("get", 0) + s["bytes"].get("get_range", 0)
    row = {
        "label": label,
        "wall_s": round(wall, 3),
        "gets": gets,
        "get_mb": round(got / 1e6, 2),
        "lists": s["requests"].get("list", 0),
        "snapshots": report.snapshots,
        "marked": report.packs_marked,
        "walked": walked,
        "rss_mb": round(rss_mb(), 1),
        "load": load(),
        "gets_by_prefix": by_prefix,
    }
    print(
        f"  {label:<6} {wall:7.2f} s  {gets:6d} GETs  {got / 1e6:7.2f} MB fetched  "
        f"{report.snapshots:5d} snapshots ({walked:5d} walked)  "
        f"peak RSS {rss_mb():.0f} MB  load {load()}",
        flush=True,
    )
    print(f"         GETs by prefix: {dict(sorted(by_prefix.items()))}")
    if prof:
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        for tp in threads:
            st.add(tp)
        st.sort_stats("tottime").print_stats(16)
        print("  all threads, by own time:")
        print("\n".join(out.getvalue().splitlines()[4:30]))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--snapshots", type=int, default=6, help="snapshots per user [6]")
    p.add_argument("--files", type=int, default=120, help="own files per home [120]")
    p.add_argument("--course-files", type=int, default=40, help="shared files per home [40]")
    p.add_argument("--new", type=int, default=0, help="users with a new snapshot [users/10]")
    p.add_argument("--seed", default="prune")
    p.add_argument("--s3", action="store_true", help="SeaweedFS (tests/fixtures/servers.py)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--profile", action="store_true", help="cProfile the cold and warm prunes")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="prune-bench-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.s3:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from fixtures.servers import start_s3_server  # type: ignore[import-not-found]

            server = start_s3_server()
            os.environ.update(server.env())
            url = server.url("prune-bench")
        else:
            url = f"file://{work / 'bucket'}"
        cache = work / "cache"
        print(
            f"prune_bench: {args.users} users x {args.snapshots} snapshots, "
            f"{args.files}+{args.course_files} files per home, {url.split(':')[0]} store, "
            f"load {load()}",
            flush=True,
        )
        t0 = time.perf_counter()
        repo = build(args, work, url, cache)
        print(f"  built in {time.perf_counter() - t0:.0f} s, load {load()}", flush=True)
        now = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        # A fresh process: a new Repository on the same cache folder.
        repo = Repository.open(open_store(url), cache_dir=str(cache))
        rows = [measured("cold", repo, now, args.profile)]
        new = args.new or max(1, args.users // 10)
        snaps = repo.list_snapshots()
        by_user: dict[str, list[Any]] = {}
        for s in snaps:
            by_user.setdefault(s.user, []).append(s)
        homes = work / "homes"
        for u in range(new):
            user = f"u{u:04d}"
            edit_home(homes / user, random.Random(f"{args.seed}-{u}-new"), 99)
            backup(repo, homes / user, user=user, parent=by_user[user][-1], workers=2)
            forget(repo, [by_user[user][0]])
        repo = Repository.open(open_store(url), cache_dir=str(cache))
        rows.append(measured("warm", repo, now, args.profile))
        rows.append(measured("again", repo, now, False))
        # The same prune as "warm" with the summary cache off: every snapshot walked,
        # as hometier did before the cache.
        rows.append(measured("nocache", repo, now, False, summaries=False))
        print(
            f"  warm with the cache vs without: {rows[3]['wall_s'] / max(rows[1]['wall_s'], 1e-3):.1f}x "
            f"faster, GETs {rows[1]['gets']} vs {rows[3]['gets']}; load {load()}"
        )
    finally:
        if server is not None:
            server.stop_s3()
            server.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
