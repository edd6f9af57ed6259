"""Pieces shared by the benchmark scripts of this folder (engine_bench.py, corpus_bench.py).

- the corpus generator (``make_corpus()`` imports ``bench/make_corpus.py``), ``tree_size``;
- verification: ``manifest()`` of a tree (everything a restore must reproduce) and
  ``compare()`` of two manifests; ``touch_files``/``untouch_files`` for incremental runs;
- measured processes: ``run_pipeline()`` (wall seconds, peak RSS per process via GNU
  time, CPU seconds, and the S3 server's CPU meanwhile when ``SERVER_PID`` is set);
- S3 through obstore: ``s3store()``, ``stored_bytes()``, ``object_size()`` and the
  streaming ``put_stream()``/``get_stream()`` of the ``tar | zstd`` baseline;
- ``machine()`` and ``versions()`` for the report header.

Plain functions, no hometier imports at module level: the measured helper processes
import only what they use.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MB = 1_000_000
MiB = 1024 * 1024
BUCKET = "bench"
PUT_BUFFER = 10 * MiB  # obstore open_writer default: parts of this size
PUT_CONCURRENCY = 12  # obstore open_writer default
SRC = str(REPO / "src")

# The benchmarks measure the hometier of this checkout, also when the interpreter has
# another installation (or a stale editable one): this process and every helper process
# (see ``checkout_env``) import it from ``src/``.
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout's ``src/`` first on PYTHONPATH."""
    rest = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": SRC + (os.pathsep + rest if rest else "")}


# --------------------------------------------------------------------------- corpus


def make_corpus() -> Any:
    """The ``bench/make_corpus.py`` module (it is a script, not a package member)."""
    sys.path.insert(0, str(HERE))
    try:
        import make_corpus
    finally:
        sys.path.remove(str(HERE))
    return make_corpus


def tree_size(root: Path) -> tuple[int, int]:
    """(regular files, bytes of distinct inodes) under ``root``."""
    files = size = 0
    seen: set[int] = set()
    for dirpath, _dirnames, filenames in os.walk(os.fsencode(root)):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not (st.st_mode & 0o170000 == 0o100000):
                continue
            files += 1
            if st.st_nlink > 1:
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            size += st.st_size
    return files, size


# --------------------------------------------------------------------------- verification


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((os.fsencode(name), os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def manifest(root: Path, workers: int = 4) -> dict[bytes, tuple[Any, ...]]:
    """Everything a restore must reproduce, by path relative to ``root`` (atime aside).

    Per entry: (type, mode, uid, gid, mtime_ns, xattrs, ...) and then for a file its
    size, sha256 and the first path of its hardlink group (None if not hardlinked), for a
    symlink its target, for anything else its rdev.
    """
    rootb = os.fsencode(root)
    raw: dict[bytes, os.stat_result] = {b".": os.lstat(rootb)}
    for dirpath, dirnames, filenames in os.walk(rootb):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            raw[os.path.relpath(full, rootb)] = os.lstat(full)
    order = sorted(raw)
    first_of: dict[int, bytes] = {}
    to_hash: list[bytes] = []
    for rel in order:
        st = raw[rel]
        if st.st_mode & 0o170000 == 0o100000 and st.st_ino not in first_of:
            first_of[st.st_ino] = rel
            to_hash.append(rel)

    def digest(rel: bytes) -> str:
        with open(os.path.join(rootb, rel), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = dict(zip(to_hash, pool.map(digest, to_hash), strict=True))
    out: dict[bytes, tuple[Any, ...]] = {}
    for rel in order:
        st = raw[rel]
        fmt = st.st_mode & 0o170000
        xattrs = _xattrs(os.path.join(rootb, rel))
        common = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)
        if fmt == 0o100000:
            first = first_of[st.st_ino]
            link = first if st.st_nlink > 1 else None
            out[rel] = ("file", *common, st.st_size, hashes[first], link)
        elif fmt == 0o120000:
            out[rel] = ("symlink", *common, os.readlink(os.path.join(rootb, rel)))
        elif fmt == 0o040000:
            out[rel] = ("dir", *common)
        else:
            out[rel] = ("other", *common, st.st_rdev)
    return out


FIELDS = ("type", "mode", "uid", "gid", "mtime_ns", "xattrs")


def compare(src: dict[bytes, tuple[Any, ...]], dst: dict[bytes, tuple[Any, ...]]) -> dict[str, Any]:
    """Differences between two manifests: counts per kind and a few examples.

    A kind is ``missing``, ``extra``, ``type`` or ``<type> <field>+<field>``, e.g.
    ``file mtime_ns`` or ``symlink mtime_ns``; mtimes that differ only below the second
    are counted as ``mtime_ns`` too, and also under ``mtime_whole_seconds`` when even the
    seconds differ.
    """
    kinds: Counter[str] = Counter()
    examples: list[str] = []
    for rel in sorted(set(src) | set(dst)):
        a, b = src.get(rel), dst.get(rel)
        if a == b:
            continue
        if a is None or b is None:
            kind = "extra" if a is None else "missing"
        elif a[0] != b[0]:
            kind = "type"
        else:
            bad = [FIELDS[i] for i in range(1, len(FIELDS)) if a[i] != b[i]]
            if a[4] // 10**9 != b[4] // 10**9:
                bad.append("mtime_whole_seconds")
            if a[len(FIELDS) :] != b[len(FIELDS) :]:
                bad.append({"file": "content", "symlink": "target"}.get(a[0], "rdev"))
            kind = f"{a[0]} " + "+".join(bad)
        kinds[kind] += 1
        if len(examples) < 5:
            examples.append(f"{os.fsdecode(rel)}: {kind}: {a} != {b}")
    return {"ok": not kinds, "differences": dict(kinds), "examples": examples}


def touch_files(home: Path, fraction: float, seed: str) -> list[tuple[bytes, int, int, int]]:
    """Append a line to ``fraction`` of the regular (not hardlinked) files; return undo info."""
    candidates: list[bytes] = []
    for dirpath, _dirnames, filenames in os.walk(os.fsencode(home)):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if st.st_mode & 0o170000 == 0o100000 and st.st_nlink == 1:
                candidates.append(full)
    candidates.sort()
    rng = random.Random(f"{seed}-touch")
    picked = rng.sample(candidates, max(1, round(len(candidates) * fraction)))
    undo = []
    for full in picked:
        st = os.lstat(full)
        undo.append((full, st.st_size, st.st_atime_ns, st.st_mtime_ns))
        mode = st.st_mode & 0o7777
        if not mode & 0o200:
            os.chmod(full, mode | 0o200)
        with open(full, "ab") as f:
            f.write(b"\n# edited after the first backup (hometier bench)\n")
        if not mode & 0o200:
            os.chmod(full, mode)
    return undo


def untouch_files(undo: list[tuple[bytes, int, int, int]]) -> None:
    for full, size, atime, mtime in undo:
        os.truncate(full, size)
        os.utime(full, ns=(atime, mtime))


# --------------------------------------------------------------------------- processes


class Measured:
    """A finished process (or pipeline): wall seconds, peak RSS per process, exit codes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.rss_kb: list[int] = []
        self.cpu: list[float] = []  # user + system seconds per process
        self.server_cpu = 0.0  # of the S3 server meanwhile
        self.codes: list[int] = []
        self.stdout = b""
        self.started = 0.0  # time.perf_counter() at start
        self.ended = 0.0

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu)

    @property
    def rss_mb(self) -> float:
        """Sum of the processes' peak RSS (they run at the same time), in MB."""
        return sum(self.rss_kb) * 1024 / MB


GNU_TIME = "/usr/bin/time"
SERVER_PID: int | None = None  # the S3 server, whose CPU time is counted per step
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float:
    """User + system seconds of a running process (and its waited-for children)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _TICK


def self_cpu() -> float:
    """User + system seconds of this process and of its waited-for children (a
    restore's writer processes, ``tar``, ``zstd``)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_argv(argv: list[str], rss_file: Path) -> list[str]:
    """``argv`` under GNU time, which writes "peak-RSS-kB user-s system-s" to ``rss_file``."""
    return [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_file), *argv]


def read_timed(rss_file: Path) -> tuple[int, float]:
    """(peak RSS kB, CPU seconds) written by ``timed_argv``."""
    f = rss_file.read_text().split()[-3:]
    return int(f[0]), float(f[1]) + float(f[2])


def run_pipeline(
    argvs: list[list[str]],
    env: dict[str, str],
    log_path: Path,
    capture_last: bool = True,
    sync: bool = True,
    stdout_path: Path | None = None,
) -> Measured:
    """Run ``argvs`` as a shell pipeline; wall time and each process's peak RSS.

    Peak RSS comes from GNU time (``%M``, i.e. wait4's ru_maxrss of a child it forked):
    ru_maxrss of a child of *this* process would include this process's own RSS, which
    Linux carries over fork and exec into the child's figure. Without GNU time the
    child's VmHWM is sampled from /proc every 10 ms instead (a lower bound). With
    ``stdout_path`` the last process writes there (``> file``) instead.
    """
    if sync:
        os.sync()  # so that writeback of an earlier step does not land in this one
    m = Measured()
    procs: list[subprocess.Popen[bytes]] = []
    use_time = os.access(GNU_TIME, os.X_OK)
    rss_files = []
    hwm: dict[int, int] = {}
    with (
        open(log_path, "ab") as err,
        tempfile.TemporaryDirectory() as tmp,
        open(stdout_path or os.devnull, "wb") as sink,
    ):
        m.started = t0 = time.perf_counter()
        server0 = proc_cpu(SERVER_PID)
        prev = None
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            if use_time:
                rss_files.append(Path(tmp) / f"rss{i}")
                argv = timed_argv(argv, rss_files[-1])
            if not last:
                out: Any = subprocess.PIPE
            elif stdout_path is not None or not capture_last:
                out = sink
            else:
                out = subprocess.PIPE
            p = subprocess.Popen(
                argv,
                stdin=prev if prev is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
            if prev is not None:
                prev.close()
            prev = p.stdout if not last else None
            procs.append(p)
        sampler = None
        if not use_time:
            sampler = _HwmSampler([p.pid for p in procs], hwm)
            sampler.start()
        data = procs[-1].stdout.read() if procs[-1].stdout else b""
        for p in procs:
            _pid, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            m.codes.append(p.returncode)
            m.cpu.append(usage.ru_utime + usage.ru_stime)
            if p.stdout is not None:
                p.stdout.close()
        m.ended = time.perf_counter()
        m.seconds = m.ended - t0
        m.server_cpu = proc_cpu(SERVER_PID) - server0
        if sampler is not None:
            sampler.stop()
            m.rss_kb = [hwm.get(p.pid, 0) for p in procs]
        else:
            m.rss_kb = [read_timed(f)[0] for f in rss_files]
    m.stdout = data
    return m


class _HwmSampler:
    """Fallback without GNU time: poll VmHWM of the given PIDs."""

    def __init__(self, pids: list[int], into: dict[int, int]) -> None:
        self.pids, self.into = pids, into
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.is_set():
            for pid in self.pids:
                try:
                    text = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        self.into[pid] = max(self.into.get(pid, 0), int(line.split()[1]))
            self.done.wait(0.01)


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


def create_cost(folder: Path, n: int = 2000) -> int:
    """Microseconds to create (and close) one empty file in ``folder``: the kernel's
    part of every restored file, which no restore (of any tool) can go below."""
    probe = folder / f".create-probe-{os.getpid()}-{random.randrange(1 << 30)}"
    probe.mkdir(parents=True)
    fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
    try:
        began = time.perf_counter()
        for i in range(n):
            os.close(os.open(str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
        took = time.perf_counter() - began
    finally:
        os.close(fd)
        shutil.rmtree(probe)
    return round(took / n * 1e6)


def vm_hwm_kb() -> int:
    """Peak RSS of this process so far (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- S3 (obstore)


def s3store(bucket: str = BUCKET) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "timeout": "300s"},
    )


def stored_bytes(prefix: str) -> tuple[int, int]:
    """(objects, bytes) under ``prefix`` of the bench bucket."""
    import obstore

    n = total = 0
    for batch in obstore.list(s3store(), prefix=prefix):
        for meta in batch:
            n += 1
            total += int(meta["size"])
    return n, total


def object_size(key: str) -> int:
    import obstore

    return int(obstore.head(s3store(), key)["size"])


def put_stream(key: str, stdin: BinaryIO) -> dict[str, int]:
    """Upload ``stdin`` to ``key`` as it comes (obstore ``open_writer``, multipart)."""
    import obstore

    total = 0
    with obstore.open_writer(
        s3store(), key, buffer_size=PUT_BUFFER, max_concurrency=PUT_CONCURRENCY
    ) as w:
        while data := stdin.read(4 * MiB):
            w.write(data)
            total += len(data)
    parts = -(-total // PUT_BUFFER)
    # BufWriter: one PUT while everything fits in the buffer, else a multipart upload
    # (create + one PUT per part + complete).
    return {"bytes": total, "writes": 1 if total <= PUT_BUFFER else parts + 2}


def get_stream(key: str, out: BinaryIO) -> int:
    """Download ``key`` to ``out`` as it comes; returns the bytes."""
    import obstore

    total = 0
    for chunk in obstore.get(s3store(), key).stream(min_chunk_size=4 * MiB):
        out.write(chunk)
        total += len(chunk)
    out.flush()
    return total


# --------------------------------------------------------------------------- report header


def cmd(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"


def machine(work: Path) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free_g": cmd(["free", "-g"]),
        "disk": cmd(["df", "-h", str(work)]).splitlines()[-1],
        "kernel": platform.release(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def hometier_rev() -> str:
    rev = cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"]):
        rev += " + uncommitted changes in src/"
    return rev


def versions() -> dict[str, str]:
    import obstore

    import hometier

    weed = shutil.which("weed") or "weed"
    return {
        "python": platform.python_version(),
        "hometier": f"{hometier.__version__} ({hometier_rev()})",
        "obstore": getattr(obstore, "__version__", "?"),
        "weed": "weed " + cmd([weed, "version"]).splitlines()[-1].replace("version ", ""),
        "tar": cmd(["tar", "--version"]).splitlines()[0],
        "zstd": cmd(["zstd", "--version"]),
    }


def mem(free_g: str) -> str:
    for line in free_g.splitlines():
        if line.startswith("Mem:"):
            return f"{line.split()[1]} GiB RAM"
    return "RAM ?"
