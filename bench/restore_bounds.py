#!/usr/bin/env python3
"""What bounds a restore of one home, outside hometier: the S3 server and the filesystem.

For each home given, in one SeaweedFS server on 127.0.0.1 (started as corpus_bench.py
does) and one fresh repository, it archives the home with hometier and then times, page
cache warm, ``sync`` before each, best of ``--runs``:

1. **restore**: ``restore(repo, snap, target)`` in this process (as the service does);
2. **fetch only**: the same snapshot's data blobs fetched, decompressed and verified
   (``for_each_blob`` with a callback that drops them): hometier without the filesystem;
3. **S3 GET floor**: every pack object of the repository read whole, ``--workers`` at a
   time (obstore), bytes dropped: the server's throughput on loopback, nothing decoded;
4. **create floor**: ``tar -xf`` of an uncompressed tar of the home held in the page
   cache: one C process creating, writing and finishing every file, nothing fetched;
5. ``zstd -dc home.tar.zst | tar -xf -`` from local disk: the local half of
   ``tar | zstd`` (no S3).

A restore cannot be faster than the slower of (2) and (4) run one after the other on
the same cores, only as fast as their overlap allows; on 2 cores shared with the S3
server the sum is the honest bound. It prints one Markdown table with ``uptime``, then
a second with the CPU each figure spent (user + system seconds of this process and of
the children it waited for: the restore's writer processes, ``tar``, ``zstd``; and of
the S3 server meanwhile): a storm of restores on a few cores cannot end before their
CPU seconds divided by the cores, so the restore's CPU against ``zstd -dc | tar -x``'s
is what bounds a storm's ratio to as many pipelines.

    python3 bench/restore_bounds.py /var/tmp/hb-real/homes/lab-env-09 --runs 2 [--volume ext4]

Restores go into a folder of the scratch disk, or with ``--volume ext4`` onto a fresh
loop-mounted ext4 image, where ``corpus_bench.py`` restores as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib
from benchlib import BUCKET, MB

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def uptime() -> str:
    return os.getloadavg().__repr__()


Cpu = tuple[float, float]
"""CPU seconds of one run: (this process and its waited-for children, the S3 server)."""


def best(runs: int, fn: Any, before: Any = None) -> tuple[float, Cpu]:
    """The fastest of ``runs`` runs of ``fn``: its seconds and its CPU seconds."""
    out: list[tuple[float, Cpu]] = []
    for _ in range(runs):
        if before is not None:
            before()
        subprocess.run(["sync"], check=True)
        c0, s0 = benchlib.self_cpu(), benchlib.proc_cpu(benchlib.SERVER_PID)
        t = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t
        cpu = (benchlib.self_cpu() - c0, benchlib.proc_cpu(benchlib.SERVER_PID) - s0)
        out.append((seconds, cpu))
    return min(out, key=lambda r: r[0])


def data_blobs(repo: Any, snap: Any) -> list[Any]:
    from hometier.engine.trees import TreeCache

    view = repo.for_snapshot(snap)
    trees = TreeCache(view, [snap.tree], workers=4)
    ids: dict[bytes, None] = {}
    stack = [snap.tree]
    while stack:
        for n in trees.nodes(stack.pop(), consume=True):
            if n.type == "dir" and n.subtree is not None:
                stack.append(n.subtree)
            elif n.type == "file" and n.link is None:
                ids.update(dict.fromkeys(n.content))
    return list(ids)


def one_home(home: Path, work: Path, restored: Path, a: argparse.Namespace) -> dict[str, Any]:
    import obstore

    from hometier.engine import backup, restore
    from hometier.repo import Repository
    from hometier.store import open_store

    name = home.name
    prefix = f"bounds-{name}"
    repo, _ = Repository.open_or_create(open_store(f"s3://{BUCKET}/{prefix}"))
    snap = backup(repo, home, user=name, workers=a.workers)
    files, size = benchlib.tree_size(home)
    target = restored / f"r-{name}"

    def clear() -> None:
        if target.exists():
            shutil.rmtree(target)

    row: dict[str, Any] = {"home": name, "files": files, "mb": size / MB}
    row["restore"], row["restore_cpu"] = best(
        a.runs, lambda: restore(repo, snap, target, workers=a.workers), clear
    )
    clear()
    ids = data_blobs(repo, snap)
    view = repo.for_snapshot(snap)
    row["fetch"], row["fetch_cpu"] = best(
        a.runs, lambda: view.for_each_blob(ids, lambda _b, _d: None, workers=a.workers)
    )
    store = benchlib.s3store()
    packs = [
        m["path"]
        for batch in obstore.list(store, prefix=f"{prefix}/")
        for m in batch
        if "/packs/" in m["path"] or "/data/" in m["path"]
    ]
    stored = sum(
        int(m["size"]) for batch in obstore.list(store, prefix=f"{prefix}/") for m in batch
    )

    def get_all() -> None:
        with ThreadPoolExecutor(max_workers=a.workers) as pool:
            list(pool.map(lambda k: len(obstore.get(store, k).bytes()), packs))

    row["s3_get"], _cpu = best(a.runs, get_all)
    row["stored_mb"] = stored / MB
    row["packs"] = len(packs)
    tar = work / f"{name}.tar"
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--format=posix",
            "--xattrs",
            "-cf",
            str(tar),
            "-C",
            str(home),
            ".",
        ],
        check=True,
    )
    subprocess.run(["cat", str(tar)], stdout=subprocess.DEVNULL, check=True)  # page cache
    zst = work / f"{name}.tar.zst"
    subprocess.run(["zstd", "-q", "-f", "-3", str(tar), "-o", str(zst)], check=True)

    def untar(argv: list[str]) -> None:
        target.mkdir()
        subprocess.run(["bash", "-c", " ".join(argv) + f" -C '{target}'"], check=True)

    row["create"], row["create_cpu"] = best(
        a.runs, lambda: untar(["tar", "--numeric-owner", "--xattrs", "-xf", f"'{tar}'"]), clear
    )
    clear()
    row["zstd_local"], row["zstd_local_cpu"] = best(
        a.runs,
        lambda: untar([f"zstd -dc '{zst}' |", "tar", "--numeric-owner", "--xattrs", "-xf", "-"]),
        clear,
    )
    clear()
    tar.unlink()
    zst.unlink()
    row["load"] = os.getloadavg()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("homes", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=2, help="best of this many runs per figure")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--work-dir", help="scratch folder (default: a new one in /var/tmp)")
    p.add_argument(
        "--volume",
        choices=["ext4", "dir"],
        default="dir",
        help="restore onto a fresh loop-mounted ext4 image (as corpus_bench.py does as "
        "root), or into a folder of the scratch disk",
    )
    a = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import corpus_bench

    work = Path(a.work_dir or tempfile.mkdtemp(prefix="hb-bounds-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    restored, volume = work / "restored", None
    if a.volume == "ext4":
        from semester_volume import Volume

        volume = Volume.create(restored, work / "restored.img", size="16G")
    else:
        restored.mkdir()
    server = corpus_bench.start_server(work)
    benchlib.SERVER_PID = server.pid
    rows = []
    try:
        os.environ.update(server.env())
        for home in a.homes:
            rows.append(one_home(home.resolve(), work, restored, a))
            r = rows[-1]
            print(f"{r['home']}: {r}", file=sys.stderr, flush=True)
    finally:
        server.close()
        if volume is not None:
            volume.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(
        "| home | files | MB | stored MB | restore s | fetch only s | S3 GET floor s (MB/s) "
        "| create floor (tar -x) s | zstd -dc \\| tar -x (local) s | restore ÷ (fetch + create) "
        "| load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rate = r["stored_mb"] / r["s3_get"] if r["s3_get"] else float("nan")
        print(
            f"| {r['home']} | {r['files']:,} | {r['mb']:.1f} | {r['stored_mb']:.1f} "
            f"| {r['restore']:.2f} | {r['fetch']:.2f} | {r['s3_get']:.2f} ({rate:.0f}) "
            f"| {r['create']:.2f} | {r['zstd_local']:.2f} "
            f"| {r['restore'] / (r['fetch'] + r['create']):.2f} "
            f"| {' '.join(f'{x:.2f}' for x in r['load'])} |"
        )
    print()
    print(
        "| home | restore CPU s (+ S3) | fetch only CPU s (+ S3) | create floor CPU s "
        "| zstd -dc \\| tar -x CPU s | restore CPU ÷ zstd -dc \\| tar -x CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        (rc, rs), (fc, fs) = r["restore_cpu"], r["fetch_cpu"]
        cc, zc = r["create_cpu"][0], r["zstd_local_cpu"][0]
        ratio = f"{rc / zc:.2f}" if zc else "-"
        print(
            f"| {r['home']} | {rc:.2f} (+ {rs:.2f}) | {fc:.2f} (+ {fs:.2f}) | {cc:.2f} "
            f"| {zc:.2f} | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
