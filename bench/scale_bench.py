#!/usr/bin/env python3
"""hometier on a repository that names tens of millions of blobs (a hub of 50,000 homes).

Builds three repositories that hold the same real small homes, one of them alone
("empty"), the others beside synthetic index entries (10 M and 50 M blobs by default),
and measures side by side, each operation in a process of its own under GNU time (peak
RSS from ``%M``, the process's own, never a forked parent's):

- ``restore`` of a small home (time, peak RSS, bytes fetched from the bucket);
- ``fetch-home`` of the same home through a real ``hometier serve`` registered with a real
  JupyterHub (time, the client's peak RSS, the service's VmHWM, bytes it fetched);
- ``backup`` of a new home, first with an empty index cache (the first start of a new
  archiver replica), then warm;
- on the 10 M repository: ``repair index`` (from the pack trailers), then ``prune`` twice
  (mark and repack, then sweep after the grace period).

Synthetic entries (documented in bench/README.md, *Scale*): the 10 M repository holds
real packs of tiny real blobs (ids are keyed BLAKE3 of their content, trailers and index
objects exact), and a synthetic snapshot whose trees use a tenth of the blobs of half of
those packs (so prune has packs to mark and packs to repack); the 50 M repository's
entries name packs that do not exist (index objects valid in every other respect, split
at the writers' bound), so it can only be restored from, backed up to and pruned by
dry run, which is all it is for. ``--smoke`` uses 20,000 and 60,000 blobs (CI).

    python3 bench/scale_bench.py                 # ~10 min on a quiet 2-core machine, 4 GB of scratch disk
    python3 bench/scale_bench.py --smoke         # ~1-2 min
    python3 bench/scale_bench.py --blobs 2M,5M --work-dir /var/tmp/scale --keep

Its other parts run after the repositories: ``bench/scale_state.py`` (a state database
of 50,000 homes on PostgreSQL, through ``state_bench``) and ``bench/scale_storm.py`` (a
500-login storm through a real JupyterHub, through ``storm_bench``). Each defines
``run_<part>(work, smoke)``, is called if present, and what it returns (a dict with a
``rows`` list of ``[what, figure, note]`` and anything else) goes into the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import benchlib

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
SYN_PER_PACK = 40_000  # real synthetic packs: 40,000 blobs of 16 bytes (~2.5 MB)
FAKE_PER_PACK = 5_000  # index-only synthetic packs
HOMES = {"small": (300, 20_000), "new-a": (300, 20_000), "new-b": (300, 20_000)}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


# --- homes and repositories ----------------------------------------------------------


def make_home(root: Path, seed: str, files: int, avg: int) -> Path:
    """A small home of ``files`` files (random content, a few folders, a 3 MB file)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        folder = root / f"d{i % 7}" / f"e{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04d}.txt").write_bytes(rng.randbytes(rng.randrange(avg // 2, avg * 3 // 2)))
    (root / "data.bin").write_bytes(rng.randbytes(3 * MiB))
    return root


def synth_fake(store: Any, n: int, seed: int) -> int:
    """Index objects naming ``n`` blobs in packs that do not exist; returns objects."""
    from hometier.repo.ids import plain_hash
    from hometier.repo.index import RawPack, encode_raw, split_packs
    from hometier.repo.pack import trailer_size

    rng = random.Random(seed)
    tails = [struct.pack("<BBIII", 0, 1, j * 700, 700, 1_000_000) for j in range(FAKE_PER_PACK)]
    objects = 0
    batch: list[RawPack] = []

    def flush() -> None:
        nonlocal objects, batch
        for group in split_packs(batch):
            data = encode_raw(group)
            store.put(f"index/{plain_hash(data).hex()}", data)
            objects += 1
        batch = []

    left = n
    while left > 0:
        k = min(FAKE_PER_PACK, left)
        ids = rng.randbytes(32 * k)
        table = b"".join([ids[j * 32 : j * 32 + 32] + tails[j] for j in range(k)])
        batch.append(RawPack(rng.randbytes(32), k * 700 + trailer_size(k), table, k))  # type: ignore[arg-type]
        left -= k
        if len(batch) >= 150:
            flush()
    flush()
    return objects


def synth_real(repo: Any, n: int, seed: int) -> dict[str, Any]:
    """``n`` tiny real blobs in real packs, indexed; and a snapshot of user
    ``synthetic`` using every 10th blob of the first half of the packs."""
    import blake3

    from hometier.repo.ids import BlobType, pack_key, plain_hash
    from hometier.repo.index import RawPack
    from hometier.repo.locator import LocatorBuilder
    from hometier.repo.pack import CHECKSUM_LEN, COUNT, ENTRY, FOOTER, MAGIC, Entry
    from hometier.repo.snapshot import Snapshot, Stats
    from hometier.repo.tree import Node, encode_tree

    key = repo.config.blob_key
    packs: list[RawPack] = []
    used: list[tuple[bytes, int, Entry]] = []
    per = max(1, min(SYN_PER_PACK, n // 8))  # at least 8 packs, also in --smoke
    npacks = (n + per - 1) // per
    counter = seed * 10**12
    for p in range(npacks):
        k = min(per, n - p * per)
        blobs, table = [], []
        for j in range(k):
            data = struct.pack("<Q", counter) + b"syntheti"
            counter += 1
            bid = blake3.blake3(data, key=key).digest()
            blobs.append(data)
            table.append(ENTRY.pack(bid, 0, 0, j * 16, 16, 16))
        raw = b"".join(table)
        trailer = raw + COUNT.pack(k)
        pack = b"".join(blobs) + trailer + plain_hash(trailer)[:CHECKSUM_LEN]
        pack += FOOTER.pack(len(trailer) + CHECKSUM_LEN, MAGIC)
        pid = plain_hash(pack)
        repo.store.put(pack_key(pid), pack)
        packs.append(RawPack(pid, len(pack), raw, k))
        if p < npacks // 2 or npacks == 1:
            for j in range(0, k, 10):
                bid, t, c, off, sl, rl = ENTRY.unpack_from(raw, j * ENTRY.size)
                used.append((pid, len(pack), Entry(bid, t, c, off, sl, rl)))
        if len(packs) >= 12:
            repo.write_index_raw(packs)
            packs = []
    if packs:
        repo.write_index_raw(packs)
    # The synthetic snapshot: files of 100 chunks each, 500 files per folder.
    loc = LocatorBuilder()
    for pid, size, e in used:
        loc.note(pid, size, e)
    dirs: list[Node] = []
    with repo.writer() as w:
        for d in range(0, len(used), 50_000):
            files = []
            part = used[d : d + 50_000]
            for f in range(0, len(part), 100):
                ids = [e.id for _p, _s, e in part[f : f + 100]]
                files.append(
                    Node(
                        name=b"f%06d" % f, type="file", mode=0o644, size=16 * len(ids), content=ids
                    )
                )
            tid, _ = w.add(BlobType.TREE, encode_tree(files))
            dirs.append(Node(name=b"d%04d" % (d // 50_000), type="dir", mode=0o755, subtree=tid))
        root, _ = w.add(BlobType.TREE, encode_tree(dirs))
        w.flush()
        for bid, where in w.locations.where.items():
            loc.where.setdefault(bid, where)
    snap = Snapshot(
        user="synthetic",
        time_ns=time.time_ns(),
        tree=root,
        root={"mode": 0o755},
        stats=Stats(files=len(used) // 100),
    )
    repo.save_snapshot(snap, loc)
    return {"packs": npacks, "used": len(used)}


def build(work: Path, name: str, n: int, homes: dict[str, Path], real: bool) -> dict[str, Any]:
    """A repository with the small home archived, then ``n`` synthetic blobs."""
    from hometier.engine import backup
    from hometier.repo import Repository
    from hometier.store import open_store

    url = f"file://{work / name}"
    repo = Repository.create(open_store(url), cache_dir=str(work / f"cache-build-{name}"))
    snap = backup(repo, homes["small"], user="small")
    info: dict[str, Any] = {"url": url, "blobs": n, "small": snap.id}
    t = time.perf_counter()
    if n and real:
        info |= synth_real(repo, n, seed=len(name))
    elif n:
        info["index_objects"] = synth_fake(repo.store, n, seed=len(name))
    info["build_seconds"] = round(time.perf_counter() - t, 1)
    shutil.rmtree(work / f"cache-build-{name}", ignore_errors=True)
    return info


# --- measured helpers (run in their own process) ----------------------------------------


def helper(argv: list[str]) -> int:
    """``scale_bench.py _helper OP JSON``: one operation; prints a JSON line."""
    from hometier.cli.main import tune_malloc

    tune_malloc()
    op, a = argv[0], json.loads(argv[1])
    from hometier.repo import Repository
    from hometier.store import open_store

    repo = Repository.open(open_store(a["url"]), cache_dir=a.get("cache"))
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=a.get("hours", 0))
    t = time.perf_counter()
    out: dict[str, Any] = {}
    if op == "restore":
        from hometier.engine import restore

        stats = restore(repo, repo.find_snapshot(a["snap"]), a["target"], workers=4)
        out["files"] = stats.files
    elif op == "backup":
        from hometier.engine import backup

        snap = backup(repo, a["source"], user=a["user"], workers=4)
        out["files"], out["stored"] = snap.stats.files, snap.stats.bytes_new_stored
        out["cache_records"] = len(repo.blobs)
    elif op == "prune":
        from hometier.engine.prune import prune

        r = prune(
            repo,
            now=now,
            grace=dt.timedelta(hours=1),
            repack_waste=0.5,
            dry_run=a.get("dry", False),
        )
        out = {k: v for k, v in vars(r).items() if isinstance(v, int | bool)}
    elif op == "repair":
        from hometier.engine.maintenance import repair_index

        r = repair_index(repo, now=now)
        out = {"packs": r.packs, "entries": r.entries, "written": r.index_objects_written}
    out["inner_seconds"] = round(time.perf_counter() - t, 2)
    stats = repo.store.stats.snapshot()
    out["fetched"] = sum(v for k, v in stats["bytes"].items() if k.startswith("get"))
    print(json.dumps(out))
    return 0


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time, with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda d: d["seconds"])
    return ordered[len(ordered) // 2] | {"runs": [d["seconds"] for d in runs]}


def measured(op: str, args: dict[str, Any], work: Path) -> dict[str, Any]:
    rss = Path(tempfile.mktemp(dir=work, prefix="rss-"))
    argv = [sys.executable, str(Path(__file__).resolve()), "_helper", op, json.dumps(args)]
    t = time.perf_counter()
    r = subprocess.run(
        benchlib.timed_argv(argv, rss),
        capture_output=True,
        text=True,
        env=benchlib.checkout_env(dict(os.environ)),
    )
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{op} failed: {r.stderr[-3000:]}")
    kb, cpu = benchlib.read_timed(rss)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    return doc | {
        "seconds": round(secs, 2),
        "rss_mb": round(kb / 1024, 1),
        "cpu": round(cpu, 1),
        "load": load(),
    }


# --- fetch-home through a real service ------------------------------------------------


def fetch_home(work: Path, name: str, info: dict[str, Any], repeat: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from fixtures.hub import check_python_parts, find_proxy
    from fixtures.service import start_hub_with_service

    check_python_parts()
    find_proxy()
    root = work / f"svc-{name}"
    os.environ["HOMETIER_TEST_STORE"] = info["url"]
    os.environ["HOMETIER_CACHE_DIR"] = str(work / f"cache-svc-{name}")
    svc = start_hub_with_service(root)
    try:
        svc.hub.create_users("small")
        token = svc.user_token("small", ["custom:hometier:restore!user=small"], expires_in=600)
        admin = svc.user_token("ops")
        runs = []
        for i in range(repeat):
            before = _fetched(svc, admin)
            target = work / f"fetched-{name}-{i}"
            target.mkdir()
            rss = work / f"rss-fetch-{name}-{i}"
            env = {"PATH": os.environ["PATH"], "HOME": str(work), "HOMETIER_RESTORE_TOKEN": token}
            env = benchlib.checkout_env(env)
            argv = [sys.executable, "-m", "hometier.cli.main", "fetch-home", "--user", "small",
                    "--service-url", svc.url, "--unpack-into", str(target)]  # fmt: skip
            t = time.perf_counter()
            r = subprocess.run(
                benchlib.timed_argv(argv, rss), env=env, capture_output=True, text=True, timeout=600
            )
            secs = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"fetch-home failed: {r.stderr[-2000:]}")
            kb, cpu = benchlib.read_timed(rss)
            assert svc.proc is not None
            runs.append(
                {
                    "seconds": round(secs, 2),
                    "rss_mb": round(kb / 1024, 1),
                    "cpu": round(cpu, 1),
                    "service_hwm_mb": _vm_hwm(svc.proc.pid),
                    "fetched": _fetched(svc, admin) - before,
                    "files": sum(1 for _ in target.rglob("*")),
                    "load": load(),
                }
            )
        return median_of(runs)
    finally:
        svc.close()
        os.environ.pop("HOMETIER_TEST_STORE", None)
        os.environ.pop("HOMETIER_CACHE_DIR", None)


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def _fetched(svc: Any, token: str) -> int:
    req = urllib.request.Request(f"{svc.url}/metrics", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("hometier_store_bytes_total") and 'op="get' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# --- one blob set per replica, or one shared through PostgreSQL? ---------------------------


def lookups(work: Path, n: int, probes: int = 20_000) -> dict[str, Any]:
    """Microseconds per blob lookup: the local cache (``BlobIndex``, ``n`` blobs, warm page
    cache) and PostgreSQL on this host (a ``bytea`` primary key, one query per lookup,
    as a shared blob set would be asked during a backup), half hits and half misses."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from hometier.repo.blobindex import BlobIndex
    from hometier.repo.index import RawPack

    rng = random.Random(4)
    folder = work / "lookups"
    bi = BlobIndex(str(folder))
    objs: dict[str, list[RawPack]] = {}
    hits: list[bytes] = []
    left, i = n, 0
    while left > 0:
        k = min(200_000, left)
        ids = rng.randbytes(32 * k)
        table = b"".join(ids[j * 32 : j * 32 + 32] + bytes(14) for j in range(k))
        objs[f"index/{i:064x}"] = [RawPack(rng.randbytes(32), 1, table, k)]  # type: ignore[arg-type]
        hits += [ids[j * 32 : j * 32 + 32] for j in range(0, k, max(1, n // probes))]
        left -= k
        i += 1
    bi.sync(dict.fromkeys(objs, 1), objs.__getitem__)
    want = hits[: probes // 2] + [rng.randbytes(32) for _ in range(probes // 2)]
    rng.shuffle(want)
    t = time.perf_counter()
    found = sum(1 for b in want if bi.get(b) is not None)  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "blobs": n,
        "local_us": round((time.perf_counter() - t) / len(want) * 1e6, 1),
        "local_found": found,
        "load": load(),
    }
    bi.close()
    try:
        import psycopg

        from fixtures.servers import start_pg_server

        pg = start_pg_server()
    except Exception as exc:  # noqa: BLE001 - the report says why
        out["postgres"] = f"not measured: {exc}"
        return out
    try:
        pg.create_database("blobs")  # type: ignore[attr-defined]
        with psycopg.connect(pg.url("blobs", driver="postgresql"), autocommit=True) as conn:
            conn.execute("CREATE TABLE blobs (id bytea PRIMARY KEY, loc bytea NOT NULL)")
            with conn.cursor().copy("COPY blobs (id, loc) FROM STDIN") as cp:
                for recs in objs.values():
                    t2 = recs[0].table
                    for j in range(0, len(t2), 46):
                        cp.write_row((t2[j : j + 32], t2[j + 32 : j + 46]))
            conn.execute("ANALYZE blobs")
            cur = conn.cursor()
            t = time.perf_counter()
            got = 0
            for b in want:
                cur.execute("SELECT loc FROM blobs WHERE id = %s", (b,))
                got += cur.fetchone() is not None
            out["postgres_us"] = round((time.perf_counter() - t) / len(want) * 1e6, 1)
            out["postgres_found"] = got
    finally:
        pg.close()
    return out


# --- the run ----------------------------------------------------------------------------


def parse_count(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scale-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [parse_count(x) for x in args.blobs.split(",")]
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "machine": benchlib.machine(work),
        "blobs": sizes,
        "repos": {},
        "ops": {},
        "notes": [],
    }
    homes = {h: make_home(work / "homes" / h, h, *HOMES[h]) for h in HOMES}
    names = ["empty"] + [f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k" for n in sizes]
    counts = dict(zip(names, [0, *sizes], strict=True))
    real = names[1] if len(names) > 1 else None
    for name in names:
        log(f"building repository {name} ({counts[name]:,} synthetic blobs)")
        report["repos"][name] = build(work, name, counts[name], homes, real=name == real)
        log(f"  built in {report['repos'][name]['build_seconds']} s")
    # Restores in interleaved rounds (empty, 10M, 50M, empty, ...): a load that drifts
    # during the run weighs on every repository alike.
    restores: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in range(args.repeat):
        for name in names:
            info = report["repos"][name]
            log(f"{name}: restore of the small home (round {i + 1})")
            target = str(work / f"restored-{name}-{i}")
            restores[name].append(
                measured(
                    "restore", {"url": info["url"], "snap": info["small"], "target": target}, work
                )
            )
    for name in names:
        info, ops = report["repos"][name], {}
        cache = str(work / f"cache-{name}")
        ops["restore"] = median_of(restores[name])
        log(f"  {ops['restore']}")
        log(f"{name}: backup of a new home, first start (empty index cache)")
        ops["backup_first"] = measured(
            "backup",
            {"url": info["url"], "cache": cache, "source": str(homes["new-a"]), "user": "new-a"},
            work,
        )
        log(f"  {ops['backup_first']}")
        log(f"{name}: backup of another new home, warm cache")
        ops["backup_warm"] = measured(
            "backup",
            {"url": info["url"], "cache": cache, "source": str(homes["new-b"]), "user": "new-b"},
            work,
        )
        log(f"  {ops['backup_warm']}")
        if args.fetch_home and not (args.smoke and name not in (names[0], names[-1])):
            log(f"{name}: fetch-home through hometier serve and JupyterHub")
            try:
                ops["fetch_home"] = fetch_home(work, name, info, args.repeat)
                log(f"  {ops['fetch_home']}")
            except Exception as exc:  # noqa: BLE001 - reported, the rest still runs
                report["notes"].append(f"fetch-home on {name}: {exc}")
                log(f"  fetch-home failed: {exc}")
        if name == real:
            log(f"{name}: repair index (from the pack trailers)")
            ops["repair_index"] = measured("repair", {"url": info["url"], "cache": cache}, work)
            log(f"  {ops['repair_index']}")
            log(f"{name}: prune (mark and repack)")
            ops["prune_mark"] = measured("prune", {"url": info["url"], "cache": cache}, work)
            log(f"  {ops['prune_mark']}")
            log(f"{name}: prune after the grace period (sweep)")
            ops["prune_sweep"] = measured(
                "prune", {"url": info["url"], "cache": cache, "hours": 2}, work
            )
            log(f"  {ops['prune_sweep']}")
            ops["restore_after_prune"] = measured(
                "restore",
                {
                    "url": info["url"],
                    "snap": info["small"],
                    "target": str(work / f"restored2-{name}"),
                },
                work,
            )
        elif name != "empty":
            log(f"{name}: prune, dry run (its synthetic packs do not exist)")
            ops["prune_dry"] = measured(
                "prune", {"url": info["url"], "cache": cache, "dry": True}, work
            )
            log(f"  {ops['prune_dry']}")
        report["ops"][name] = ops
    if args.lookups:
        log(f"lookups: local cache vs PostgreSQL ({args.lookups:,} blobs)")
        report["lookups"] = lookups(work, args.lookups)
        log(f"  {report['lookups']}")
    for hook in ("state", "storm"):
        try:
            fn = getattr(importlib.import_module(f"scale_{hook}"), f"run_{hook}")
        except (ImportError, AttributeError):
            continue
        log(f"running run_{hook}")
        report[hook] = fn(work, args.smoke)
    report["machine"]["loadavg_end"] = load()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report


def render(report: dict[str, Any]) -> str:
    names = list(report["repos"])
    base = report["ops"]["empty"]
    lines = [
        f"# Scale benchmark, {report['started'][:16]}",
        "",
        f"{report['machine']['nproc']} cores, load at start {report['machine']['loadavg']}, "
        f"at the end {report['machine']['loadavg_end']}.",
        "",
        "| operation | "
        + " | ".join(f"{n} ({report['repos'][n]['blobs']:,} blobs)" for n in names)
        + " |",
        "|---|" + "---|" * len(names),
    ]

    def cell(op: str, n: str) -> str:
        d = report["ops"][n].get(op)
        if not d:
            return "–"
        extra = f", svc {d['service_hwm_mb']} MB" if "service_hwm_mb" in d else ""
        cpu = f" ({d['cpu']} CPU s)" if "cpu" in d else ""
        got = d["fetched"] / 1e6
        return f"{d['seconds']} s{cpu}, {d['rss_mb']} MB{extra}, {got:.1f} MB got (load {d['load'].split()[0]})"

    for op in (
        "restore",
        "fetch_home",
        "backup_first",
        "backup_warm",
        "repair_index",
        "prune_mark",
        "prune_sweep",
        "restore_after_prune",
        "prune_dry",
    ):
        if any(op in report["ops"][n] for n in names):
            lines.append(f"| {op} | " + " | ".join(cell(op, n) for n in names) + " |")
    lines += ["", "**Targets**", ""]
    big = names[-1]
    for op in ("restore", "fetch_home"):
        b, x = base.get(op), report["ops"][big].get(op)
        if b and x:
            ok = x["seconds"] <= 1.2 * b["seconds"] + 0.05 and x["rss_mb"] <= b["rss_mb"] + 50
            lines.append(
                f"- {op} at {big}: {x['seconds'] / max(b['seconds'], 1e-9):.2f}x the time "
                f"(load {b['load'].split()[0]} → {x['load'].split()[0]}; CPU "
                f"{x.get('cpu', 0) / max(b.get('cpu', 0), 1e-9):.2f}x), "
                f"{x['rss_mb'] - b['rss_mb']:+.1f} MB: {'pass' if ok else 'FAIL'} (≤ 1.2x, ≤ +50 MB)"
            )
    peak = max(
        (d.get("rss_mb", 0), o)
        for n in names
        for o, d in report["ops"][n].items()
        if not o.startswith("prune")
    )
    lines.append(
        f"- every process but prune below 300 MB: peak {peak[0]} MB ({peak[1]}): "
        f"{'pass' if peak[0] < 300 else 'FAIL'}"
    )
    prunes = [
        d["rss_mb"] for n in names for o, d in report["ops"][n].items() if o.startswith("prune")
    ]
    if prunes:
        lines.append(
            f"- prune below 1 GB: peak {max(prunes)} MB: {'pass' if max(prunes) < 1000 else 'FAIL'}"
        )
    if "lookups" in report:
        lk = report["lookups"]
        lines += [
            "",
            f"**Blob set lookups** ({lk['blobs']:,} blobs): local cache {lk['local_us']} µs, "
            f"PostgreSQL on this host {lk.get('postgres_us', lk.get('postgres'))} µs per lookup "
            f"(load {lk['load'].split()[0]})",
        ]
    for hook in ("state", "storm"):
        if hook in report:
            lines += ["", f"**{hook}**", ""] + [
                f"- {' — '.join(map(str, r))}" for r in report[hook].get("rows", [])
            ]
    lines += ["", *[f"- note: {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_helper":
        return helper(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="20k and 60k blobs (CI)")
    p.add_argument("--blobs", default=None, help="synthetic blobs of each big repository (10M,50M)")
    p.add_argument("--no-fetch-home", dest="fetch_home", action="store_false")
    p.add_argument(
        "--lookups",
        type=parse_count,
        default=None,
        help="blobs for the local-cache vs PostgreSQL lookup timing (2M; 0: skip)",
    )
    p.add_argument("--lookups-only", action="store_true", help="only that timing")
    p.add_argument("--repeat", type=int, default=3, help="restores and fetch-homes (median)")
    p.add_argument("--work-dir")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args()
    args.blobs = args.blobs or ("20k,60k" if args.smoke else "10M,50M")
    if args.lookups is None:
        args.lookups = 50_000 if args.smoke else 2_000_000
    if args.lookups_only:
        work = Path(tempfile.mkdtemp(prefix="scale-lookups-", dir="/var/tmp"))
        try:
            print(json.dumps(lookups(work, args.lookups)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if not os.access(benchlib.GNU_TIME, os.X_OK):
        print("needs GNU time (apt-get install time)", file=sys.stderr)
        return 2
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"scale-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (out / f"scale-{stamp}.md").write_text(text)
    print(text)
    return 0 if not report["notes"] else 1


if __name__ == "__main__":
    sys.exit(main())
