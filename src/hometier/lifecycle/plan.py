"""``hometier plan``: what archiving idle homes would move and cost, changing nothing.

Three steps, each usable alone:

1. ``scan_homes`` walks the metadata of every home once (threads across homes; never
   following symlinks nor entering another filesystem; directories and files opened
   with ``O_NOATIME`` so that not even access times move). Per home it keeps the counts
   and a counter of file sizes (16 bytes per distinct size), and meanwhile draws the
   *priority sample* of sizes: bottom-k on ``u(size)/size`` (``u`` a seeded hash), so a
   size is sampled with probability ``min(1, size * tau)``, each sampled size with up to
   ``REFS_PER_SIZE`` of its files (those with the smallest seeded path hash).
2. ``read_sample`` reads, for the homes that would move: first every *heavy* size (one
   holding ``HEAVY_SHARE`` of those bytes or more; a second walk of a few homes finds
   files of it when the first kept none), then the priority sample in priority order
   while the byte budget lasts. A file up to ``WINDOW`` is read whole, a larger one as a
   ``WINDOW`` at an offset fixed per size; FastCDC cuts it (``iter_chunks``) and each
   blob is hashed and compressed with ``codec.encode`` (zstd level 3, raw when that does
   not pay), as the archiver would store it.
3. ``make_plan`` (pure) decides who would move at each idle threshold with the
   archiver's own ``select_idle`` and estimates the stored size of the moved bytes.

Why sizes: identical files have identical sizes, so reading several files of a sampled
size puts copies side by side and dedup among them is measured, not guessed (a plain
random sample of files almost never holds two copies of anything, and sees no dedup).
Dedup between files of different sizes (edited copies, appended logs) is not seen: the
estimate then errs towards more stored bytes. Per threshold, stored/raw is a
Horvitz-Thompson ratio over the sampled sizes (heavy ones with probability 1); the
tolerance is 1.96 standard errors (about 95%) of that sampling. It does not cover the
windows of large files, nor sizes with more files than were read standing for the rest
(``class_stored``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import math
import os
import stat
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from hometier.engine.fsutil import open_beneath
from hometier.errors import UsageError
from hometier.lifecycle.activity import NOTICE_NAME, HubUser
from hometier.lifecycle.homes import QUARANTINE_DIR
from hometier.lifecycle.policy import HomeFacts, Policy, select_idle
from hometier.lifecycle.prices import Prices, monthly_cost
from hometier.lifecycle.units import parse_duration
from hometier.repo.chunker import Chunking, iter_chunks
from hometier.repo.codec import encode
from hometier.repo.ids import plain_hash

SKIPPED_NAMES = frozenset({"lost+found"})
WINDOW = 2 * 1024 * 1024
"""Bytes read from a file larger than this: FastCDC cuts it into one to a few chunks."""
REFS_PER_SIZE = 16
"""Files of one sampled size kept (and read, up to ``PER_SIZE_BYTES``); the rest extrapolated."""
PER_SIZE_BYTES = 8 * 1024 * 1024
HEAVY_SHARE = 0.005
"""A size whose files hold this share of the bytes is read for certain (at most 200 sizes)."""
SECOND_WALK_HOMES = 64
Z95 = 1.96
DEFAULT_THRESHOLDS = "7d,30d,90d,180d"

_O_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_M64 = (1 << 64) - 1
_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, stat.S_IFREG, stat.S_IFDIR
_SMALL = 1 << 16
"""Sizes below this have their hash precomputed: most files are small."""
_TICK = 4096

FilesSeen = Callable[[int], None]


# --- which folders are homes ---------------------------------------------------------


@dataclass
class HomeScan:
    """What the metadata walk of one home found."""

    name: str
    """Folder name under the homes root (may differ from the user name: ``home_template``)."""
    user: str
    path: str
    files: int = 0
    bytes: int = 0
    """Apparent size of the regular files; a file with several hard links counts once."""
    allocated: int = 0
    """``st_blocks * 512`` of the same files (sparse files take less)."""
    newest_ns: int = 0
    """Newest mtime/ctime of the home and everything in it, hometier's notice excepted."""
    archived: bool = False
    """Nothing but hometier's notice file: archived already."""
    other_fs: int = 0
    """Directories not entered because they are another filesystem (mounts)."""
    unreadable: int = 0
    sizes: array[int] = field(default_factory=lambda: array("q"), repr=False)
    """Distinct non-zero file sizes in the home, ascending ..."""
    size_files: array[int] = field(default_factory=lambda: array("q"), repr=False)
    """... and how many files have each: 16 bytes per distinct size, not per file."""

    @property
    def newest(self) -> dt.datetime | None:
        return (
            dt.datetime.fromtimestamp(self.newest_ns / 1e9, tz=dt.UTC) if self.newest_ns else None
        )


def _template_parts(template: str) -> tuple[str, str, str]:
    first, _, rest = template.partition("/")
    if template.count("{username}") != 1 or "{username}" not in first:
        raise UsageError(
            f"plan needs {{username}} once in the first folder of home_template, not {template!r}"
        )
    prefix, suffix = first.split("{username}")
    return prefix, suffix, rest


def list_homes(root: str, template: str = "{username}") -> tuple[list[HomeScan], dict[str, str]]:
    """The homes under ``root`` by name, and the entries that are not homes with why.

    Dot entries (the quarantine among them), ``lost+found``, non-directories (symlinks
    are not followed) and names that ``template`` cannot produce are not homes.
    """
    prefix, suffix, rest = _template_parts(template)
    homes: list[HomeScan] = []
    skipped: dict[str, str] = {}
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise UsageError(f"cannot list the homes root {root}: {exc.strerror or exc}") from exc
    for name in names:
        if name.startswith("."):
            if name != QUARANTINE_DIR:
                skipped[name] = "a dot folder"
            continue
        if name in SKIPPED_NAMES:
            skipped[name] = "not a home"
            continue
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError as exc:
            skipped[name] = f"unreadable: {exc.strerror}"
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink (not followed)" if stat.S_ISLNK(st.st_mode) else "not a folder"
            skipped[name] = kind
            continue
        body = name[len(prefix) : len(name) - len(suffix)]
        if not (name.startswith(prefix) and name.endswith(suffix) and body):
            skipped[name] = "does not match home_template"
            continue
        if rest:
            path = os.path.join(path, rest)
            if not os.path.isdir(path) or os.path.islink(path):
                skipped[name] = f"has no folder {rest}"
                continue
        homes.append(HomeScan(name=name, user=body, path=path))
    return homes, skipped


# --- the size sample -----------------------------------------------------------------


def mix64(x: int) -> int:
    """A 64-bit finaliser (splitmix64): consecutive sizes get unrelated values."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def unit_hash(seed: int, size: int) -> float:
    """A uniform number in (0, 1] fixed by ``seed`` and ``size``."""
    return (mix64(size ^ mix64(seed)) + 1) / 2.0**64


@dataclass
class SizeClass:
    """One sampled size: how many files have it in each home, and some of them."""

    size: int
    priority: float
    counts: dict[int, int] = field(default_factory=dict)
    """Home index → number of files of this size there (exact, from the walk's counters)."""
    refs: list[tuple[int, int, str]] = field(default_factory=list)
    """Heap of (-hash, home index, relative path): the files with the smallest hashes."""
    certain: bool = False
    """Read because it holds a large share of the bytes (inclusion probability 1)."""

    def files(self, homes: Iterable[int]) -> int:
        return sum(self.counts.get(h, 0) for h in homes)


class RefCollector:
    """Keeps, for each wanted size, the ``max_refs`` files with the smallest seeded hash.

    Called from the walker threads; what is kept does not depend on the walk's order.
    """

    def __init__(self, classes: dict[int, SizeClass], seed: int, max_refs: int) -> None:
        self.classes = classes
        self.seed = seed
        self.max_refs = max_refs
        self._lock = threading.Lock()
        self._key = mix64(seed).to_bytes(8, "little")

    def wants(self, size: int) -> bool:
        return size in self.classes

    def ref_hash(self, home: str, rel: str) -> int:
        data = f"{home}/{rel}".encode("utf-8", "surrogateescape")
        return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=self._key).digest())

    def offer(self, size: int, index: int, home: str, rel: str) -> None:
        h = self.ref_hash(home, rel)
        with self._lock:
            c = self._class(size)
            if c is not None:
                self._keep(c, h, index, rel)

    def _class(self, size: int) -> SizeClass | None:
        return self.classes.get(size)

    def _keep(self, c: SizeClass, h: int, index: int, rel: str) -> None:
        if len(c.refs) < self.max_refs:
            heapq.heappush(c.refs, (-h, index, rel))
        elif -h > c.refs[0][0]:
            heapq.heapreplace(c.refs, (-h, index, rel))


class SizeSample(RefCollector):
    """Bottom-``k`` file sizes by priority ``u(size)/size``: inclusion probability ∝ size.

    Keeps ``k + 1`` sizes: the last one's priority is ``tau``, and a kept size is in the
    sample with probability ``min(1, size * tau)`` (priority sampling).
    """

    def __init__(self, k: int = 2000, seed: int = 0, refs: int = REFS_PER_SIZE) -> None:
        if k < 1:
            raise UsageError("the sample needs at least one file size")
        super().__init__({}, seed, refs)
        self.k = k
        self.tau = math.inf
        """Priorities at or above this cannot enter any more (read without the lock)."""
        self._heap: list[tuple[float, int]] = []
        self._salt = mix64(seed)
        self.small_u = [self.u(n) for n in range(_SMALL)]

    def u(self, size: int) -> float:
        """``unit_hash(seed, size)``, with the seed's half precomputed."""
        return (mix64(size ^ self._salt) + 1) / 2.0**64

    def priority(self, size: int) -> float:
        return self.u(size) / size

    def wants(self, size: int) -> bool:
        u = self.small_u[size] if size < _SMALL else self.u(size)
        return u < size * self.tau

    def _class(self, size: int) -> SizeClass | None:
        q = self.priority(size)
        if q >= self.tau:
            return None
        c = self.classes.get(size)
        if c is None:
            c = self.classes[size] = SizeClass(size, q)
            heapq.heappush(self._heap, (-q, size))
            if len(self._heap) > self.k + 1:
                del self.classes[heapq.heappop(self._heap)[1]]
            if len(self._heap) == self.k + 1:
                self.tau = -self._heap[0][0]
        return c

    def ranked(self) -> list[SizeClass]:
        """Kept sizes, lowest priority first (up to k + 1: the last one sets tau)."""
        return sorted(self.classes.values(), key=lambda c: (c.priority, c.size))


# --- the metadata walk ---------------------------------------------------------------


def _open_in(home: str, rel: str, flags: int) -> int:
    """Open ``rel`` inside the home folder without following a symlink anywhere on the
    way (``fsutil.open_beneath``): a user who swaps a folder for a link mid-scan cannot
    make root read outside their home. ``O_NOATIME`` where allowed."""
    top = os.open(home, _DIR_FLAGS)
    try:
        if not rel:
            return os.dup(top)
        if _O_NOATIME:
            try:
                return open_beneath(top, rel, flags | _O_NOATIME)
            except PermissionError:
                pass
        return open_beneath(top, rel, flags)
    finally:
        os.close(top)


def _open_dir(home: str, rel: str) -> int:
    return _open_in(home, rel, _DIR_FLAGS)


def walk_home(
    home: HomeScan,
    index: int,
    collector: RefCollector | None = None,
    seen: FilesSeen | None = None,
) -> HomeScan:
    """Fill ``home``'s figures from one walk of its metadata (idempotent: they reset).

    Symlinks are never followed; directories on another device than the home are counted
    in ``other_fs`` and not entered; unlistable ones count in ``unreadable``. Files of a
    size ``collector`` wants are offered to it; ``seen`` gets file counts as it goes.
    """
    home.files = home.bytes = home.allocated = home.other_fs = home.unreadable = 0
    try:
        top = os.lstat(home.path)
    except OSError:
        home.unreadable = 1
        return home
    dev = top.st_dev
    newest = max(top.st_mtime_ns, top.st_ctime_ns)
    files = nbytes = alloc = other_fs = unreadable = 0
    root_entries = 0
    notice = False
    links: set[int] = set()
    per_size: dict[int, int] = {}
    count = per_size.get
    sink = collector if collector is not None else RefCollector({}, 0, 0)
    wants, offer = sink.wants, sink.offer
    stack = [""]
    ticked = 0
    while stack:
        rel = stack.pop()
        try:
            fd = _open_dir(home.path, rel)
        except OSError:
            unreadable += 1
            continue
        try:
            with os.scandir(fd) as it:
                for e in it:
                    name = e.name
                    if not rel:
                        if name == NOTICE_NAME:
                            notice = True
                            continue
                        root_entries += 1
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    t = st.st_mtime_ns
                    if st.st_ctime_ns > t:
                        t = st.st_ctime_ns
                    if t > newest:
                        newest = t
                    kind = st.st_mode & _S_IFMT
                    if kind == _S_IFREG:
                        files += 1
                        if st.st_nlink > 1:
                            if st.st_ino in links:
                                continue
                            links.add(st.st_ino)
                        size = st.st_size
                        nbytes += size
                        alloc += st.st_blocks * 512
                        per_size[size] = count(size, 0) + 1
                        if size and wants(size):
                            offer(size, index, home.name, f"{rel}/{name}" if rel else name)
                    elif kind == _S_IFDIR:
                        if st.st_dev == dev:
                            stack.append(f"{rel}/{name}" if rel else name)
                        else:
                            other_fs += 1
        except OSError:
            unreadable += 1
        finally:
            os.close(fd)
        if seen is not None and files - ticked >= _TICK:
            seen(files - ticked)
            ticked = files
    if seen is not None and files > ticked:
        seen(files - ticked)
    home.archived = notice and root_entries == 0
    home.files, home.bytes, home.allocated = files, nbytes, alloc
    home.other_fs, home.unreadable = other_fs, unreadable
    # An archived home's own times are those of hometier emptying it: not activity.
    home.newest_ns = 0 if home.archived else newest
    per_size.pop(0, None)
    home.sizes = array("q", sorted(per_size))
    home.size_files = array("q", (per_size[s] for s in home.sizes))
    return home


@dataclass
class HomesScan:
    root: str
    homes: list[HomeScan]
    skipped: dict[str, str]
    sample: SizeSample
    seconds: float
    workers: int = 1

    @property
    def files(self) -> int:
        return sum(h.files for h in self.homes)

    @property
    def bytes(self) -> int:
        return sum(h.bytes for h in self.homes)

    @property
    def allocated(self) -> int:
        return sum(h.allocated for h in self.homes)


def scan_homes(
    root: str,
    template: str = "{username}",
    *,
    workers: int = 8,
    sample_sizes: int = 2000,
    seed: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_home: Callable[[HomeScan], None] | None = None,
    on_files: FilesSeen | None = None,
) -> HomesScan:
    """Walk every home under ``root`` once (reads metadata only; writes nothing)."""
    t0 = time.monotonic()
    homes, skipped = list_homes(os.path.abspath(root), template)
    sample = SizeSample(sample_sizes, seed)
    if on_start is not None:
        on_start(len(homes))
    workers = max(1, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="plan-scan") as pool:
        futures = [pool.submit(walk_home, h, i, sample, on_files) for i, h in enumerate(homes)]
        for f in futures:
            done = f.result()
            if on_home is not None:
                on_home(done)
    root = os.path.abspath(root)
    return HomesScan(root, homes, skipped, sample, time.monotonic() - t0, workers)


# --- reading the sample --------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: bytes
    raw: int
    stored: int


@dataclass(frozen=True)
class FileReading:
    home: int
    blobs: tuple[Blob, ...] | None
    """None: the file could not be read or changed (size differs) meanwhile."""


@dataclass
class SizeReading:
    cls: SizeClass
    offset: int
    length: int
    files: list[FileReading]
    proxy: bool = False
    """No file of this size in the homes in scope was kept: others stand in for them."""


@dataclass
class SampleReadings:
    sizes: list[SizeReading]
    tau: float
    """Priority threshold of the sampled sizes: inclusion probability min(1, size * tau)."""
    bytes_read: int
    files_read: int
    budget: int
    heavy: int = 0
    """Sizes read for certain because each holds at least ``HEAVY_SHARE`` of the bytes."""
    second_walk_homes: int = 0
    """Homes walked again to find files of heavy sizes."""


def window_of(size: int, seed: int, params: Chunking) -> tuple[int, int]:
    """(offset, length) read from every file of ``size``: the same for all, so copies match."""
    if size <= WINDOW or size <= params.small:
        return 0, size
    span = size - WINDOW + 1
    return int(unit_hash(seed + 1, size) * span) % span, WINDOW


def read_blobs(
    path: tuple[str, str], size: int, offset: int, length: int, params: Chunking
) -> tuple[Blob, ...] | None:
    """Hash and compress ``length`` bytes at ``offset`` of a regular file of ``size``
    (``path``: the home folder and the file's path inside it)."""
    try:
        fd = _open_in(*path, _FILE_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        out = []
        got = 0
        for chunk in iter_chunks(fd, length, params, offset):
            got += len(chunk)
            out.append(Blob(plain_hash(chunk), len(chunk), len(encode(chunk)[1])))
        return tuple(out) if got == length else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _size_counts(homes: Sequence[HomeScan], scope: Iterable[int]) -> dict[int, int]:
    """Size → number of files of that size in the homes of ``scope``."""
    out: dict[int, int] = {}
    for i in scope:
        h = homes[i]
        for s, n in zip(h.sizes, h.size_files, strict=True):
            out[s] = out.get(s, 0) + n
    return out


def _second_walk(
    scan: HomesScan, classes: dict[int, SizeClass], sizes: list[int], scope: set[int]
) -> int:
    """Find files of ``sizes`` in a few homes of ``scope`` (seeded order); returns how many."""
    refs = RefCollector({s: classes[s] for s in sizes}, scan.sample.seed, scan.sample.max_refs)
    order = sorted(scope, key=lambda i: refs.ref_hash(scan.homes[i].name, ""))
    need = {s: min(scan.sample.max_refs, classes[s].files(scope)) for s in sizes}
    chosen: list[int] = []
    for i in order:
        if not need or len(chosen) >= SECOND_WALK_HOMES:
            break
        hit = [s for s in need if classes[s].counts.get(i)]
        if hit:
            chosen.append(i)
            for s in hit:
                need[s] -= classes[s].counts[i]
                if need[s] <= 0:
                    del need[s]
    with ThreadPoolExecutor(scan.workers, thread_name_prefix="plan-scan") as pool:
        # Copies: the figures of the first walk stay as they were.
        list(pool.map(lambda i: walk_home(replace(scan.homes[i]), i, refs), chosen))
    return len(chosen)


def _spread(
    refs: list[tuple[int, str]], scopes: list[set[int]], limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` refs per scope, smallest scopes first, in ``refs``' order."""
    todo: list[tuple[int, str]] = []
    for homes in scopes:
        have = sum(r[0] in homes for r in todo)
        for r in refs:
            if have >= limit:
                break
            if r[0] in homes and r not in todo:
                todo.append(r)
                have += 1
    return todo


def read_sample(
    scan: HomesScan,
    scopes: Sequence[set[int]],
    *,
    budget: int = 256 * 1024 * 1024,
    workers: int = 4,
    params: Chunking | None = None,
    on_start: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> SampleReadings:
    """Read the sample for the homes of ``scopes`` (those that would move, per threshold).

    First the *heavy* sizes (each at least ``HEAVY_SHARE`` of the bytes in scope, largest
    first, within half the budget): read for certain, found by a second walk of a few
    homes when the first kept none of their files. Then the priority sample, in priority
    order while the budget lasts (stopping early keeps a valid sample: tau becomes the
    next size's priority). Only files in some scope are read, chosen so that each scope
    gets its share (copies are only seen side by side if two of them are read), unless a
    size has files in scope but none kept: then kept files elsewhere stand in for them.
    """
    params = params or Chunking()
    scope: set[int] = set().union(*scopes)
    by_size = sorted(scopes, key=len)
    sample = scan.sample
    ranked = sample.ranked()
    tau = ranked[sample.k].priority if len(ranked) > sample.k else math.inf
    classes = {c.size: c for c in ranked[: sample.k]}
    counts = _size_counts(scan.homes, scope)
    total = sum(s * n for s, n in counts.items())
    heavy = sorted(
        (s for s, n in counts.items() if s * n >= total * HEAVY_SHARE),
        key=lambda s: (-s * counts[s], s),
    )
    for s in heavy:
        classes.setdefault(s, SizeClass(s, sample.priority(s)))
    for i, h in enumerate(scan.homes):
        for s, n in zip(h.sizes, h.size_files, strict=True):
            c = classes.get(s)
            if c is not None:
                c.counts[i] = n
    missing = [s for s in heavy if not any(r[1] in scope for r in classes[s].refs)]
    walked = _second_walk(scan, classes, missing, scope) if missing else 0

    plan: list[SizeReading] = []
    spent = 0

    def add(c: SizeClass, limit: int) -> bool:
        nonlocal spent
        offset, length = window_of(c.size, sample.seed, params)
        refs = [(home, rel) for _, home, rel in sorted(c.refs, reverse=True)]
        per_size = max(2, PER_SIZE_BYTES // max(length, 1))
        proxy = not any(r[0] in scope for r in refs) and c.files(scope) > 0
        todo = refs[:per_size] if proxy else _spread(refs, by_size, per_size)
        cost = length * len(todo)
        if todo and spent + cost > limit:
            return False
        spent += cost
        plan.append(SizeReading(c, offset, length, [], proxy))
        for home, rel in todo:
            plan[-1].files.append(FileReading(home, None))
            jobs.append((len(plan) - 1, (scan.homes[home].path, rel)))
        return True

    jobs: list[tuple[int, tuple[str, str]]] = []
    for s in heavy:
        if not add(classes[s], budget // 2):
            break
        classes[s].certain = True
    for c in ranked[: sample.k]:
        if c.certain:
            continue
        if not add(c, budget if any(not p.cls.certain for p in plan) else 2**62):
            tau = c.priority
            break
    if on_start is not None:
        on_start(spent)

    def one(job: tuple[int, tuple[str, str]]) -> tuple[int, tuple[Blob, ...] | None]:
        i, path = job
        r = plan[i]
        blobs = read_blobs(path, r.cls.size, r.offset, r.length, params)
        if on_bytes is not None:
            on_bytes(r.length)
        return i, blobs

    read = 0
    slot = {i: 0 for i in range(len(plan))}
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="plan-read") as pool:
        for i, blobs in pool.map(one, jobs):
            r = plan[i]
            r.files[slot[i]] = FileReading(r.files[slot[i]].home, blobs)
            slot[i] += 1
            read += sum(b.raw for b in blobs or ())
    return SampleReadings(
        plan, tau, read, len(jobs), budget, sum(p.cls.certain for p in plan), walked
    )


# --- the estimate (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One sampled unit: raw bytes ``x``, stored bytes ``y``, inclusion probability ``pi``."""

    x: float
    y: float
    pi: float


@dataclass(frozen=True)
class Estimate:
    ratio: float
    """Estimated stored / raw bytes of the homes that would move."""
    tolerance: float
    """Half-width of the ~95% interval of ``ratio`` (1.96 standard errors)."""
    sizes: int
    """Sampled sizes with files among these homes."""
    files: int
    """Files read for those sizes."""
    bytes_read: int
    basis: str
    """"sample", "wider sample" (too few sizes here: those of all idle homes), or "none"."""


def ratio_estimate(obs: Sequence[Observation]) -> tuple[float, float] | None:
    """Horvitz-Thompson ratio Σ(y/π) / Σ(x/π) and its standard error.

    The variance is the linearised one of Poisson sampling, Σ (1-π)/π² (y - R x)² / X²,
    which is that of priority sampling conditioned on tau. None when Σx is 0.
    """
    big_x = sum(o.x / o.pi for o in obs)
    if big_x <= 0:
        return None
    r = sum(o.y / o.pi for o in obs) / big_x
    var = sum((1 - o.pi) / o.pi**2 * (o.y - r * o.x) ** 2 for o in obs)
    return r, math.sqrt(var) / big_x


def class_stored(files: Sequence[tuple[Blob, ...]], n: int) -> float:
    """Stored bytes of ``n`` files of one size from the blobs of ``files``, some of them.

    A blob seen in two or more of the files read is stored once: copies are common.
    A blob seen in one file stands for ``n / len(files)`` files holding one blob each
    (Good-Turing: the share of singletons in the sample is the share of unique content).
    Exact when every file was read; errs high when blobs have a few copies each.
    """
    seen: dict[bytes, tuple[int, int]] = {}
    for blobs in files:
        for b in {b.digest: b for b in blobs}.values():
            k, _ = seen.get(b.digest, (0, 0))
            seen[b.digest] = (k + 1, b.stored)
    scale = n / len(files)
    return sum(stored if k > 1 else stored * scale for k, stored in seen.values())


def observe(readings: SampleReadings, homes: set[int]) -> tuple[list[Observation], int, int]:
    """Per sampled size: raw bytes of its files in ``homes`` and the estimated stored bytes.

    Stored bytes are those of the distinct blobs of the files read (``class_stored``),
    scaled from the window to the whole file. A size whose files could not be read
    counts as incompressible (stored = raw). Returns (observations, files used, bytes read).
    """
    out: list[Observation] = []
    used = nbytes = 0
    for s in readings.sizes:
        n = s.cls.files(homes)
        if n == 0:
            continue
        x = n * s.cls.size
        pi = 1.0 if s.cls.certain else min(1.0, s.cls.size * readings.tau)
        ok = [f for f in s.files if f.blobs is not None]
        files = [f.blobs for f in ok if s.proxy or f.home in homes] or [f.blobs for f in ok]
        if not files:
            out.append(Observation(x, x, pi))
            continue
        used += len(files)
        nbytes += sum(b.raw for blobs in files for b in blobs or ())
        y = class_stored([b for b in files if b is not None], n) * s.cls.size / s.length
        out.append(Observation(x, y, pi))
    return out, used, nbytes


def estimate(readings: SampleReadings, homes: set[int], wider: set[int]) -> Estimate:
    """The ratio for the moved ``homes``; from ``wider`` when they have under 2 sizes."""
    obs, used, nbytes = observe(readings, homes)
    basis = "sample"
    if len(obs) < 2:
        obs, used, nbytes = observe(readings, wider)
        basis = "wider sample"
    got = ratio_estimate(obs) if obs else None
    if got is None:
        return Estimate(1.0, 0.0, 0, 0, 0, "none")
    r, se = got
    return Estimate(r, Z95 * se, len(obs), used, nbytes, basis)


# --- activity, thresholds and costs (pure) -------------------------------------------


def parse_thresholds(text: str) -> list[tuple[str, dt.timedelta]]:
    """``"7d,30d"`` → [("7d", 7 days), ("30d", 30 days)], sorted, duplicates dropped."""
    out: dict[dt.timedelta, str] = {}
    for part in text.split(","):
        if part.strip():
            d = parse_duration(part.strip())
            if d.total_seconds() <= 0:
                raise UsageError(f"an idle threshold must be positive, not {part.strip()!r}")
            out.setdefault(d, part.strip())
    if not out:
        raise UsageError("no idle thresholds given (use e.g. 7d,30d,90d,180d)")
    return [(label, d) for d, label in sorted(out.items())]


def home_facts(homes: Sequence[HomeScan], hub: dict[str, HubUser] | None) -> list[HomeFacts]:
    """Last activity = newest file time or the Hub's last_activity, whichever is later."""
    facts = []
    for h in homes:
        last, source = h.newest, "files"
        u = hub.get(h.user) if hub is not None else None
        if (
            u is not None
            and u.last_activity is not None
            and (last is None or u.last_activity > last)
        ):
            last, source = u.last_activity, "hub"
        facts.append(
            HomeFacts(
                user=h.user,
                state="archived" if h.archived else "active",
                hot_bytes=h.bytes,
                last_activity=last,
                activity_source=source if last is not None else None,
                server_running=u is not None and u.running,
            )
        )
    return facts


def moved(
    facts: Sequence[HomeFacts], now: dt.datetime, after: dt.timedelta, policy: Policy
) -> set[int]:
    """Indexes of the homes the archiver would take at ``now`` if idle ``after`` this long."""
    p = Policy(
        inactive_after=after,
        min_size=policy.min_size,
        max_size=policy.max_size,
        max_per_cycle=len(facts) + 1,
    )
    chosen = {d.user for d in select_idle(facts, now, p) if d.chosen}
    return {i for i, f in enumerate(facts) if f.user in chosen}


@dataclass(frozen=True)
class Row:
    """The plan for one idle threshold."""

    label: str
    after: dt.timedelta
    homes: int
    files: int
    bytes: int
    allocated: int
    estimate: Estimate
    stored: float
    stored_low: float
    stored_high: float
    cost_before: float
    cost_after: float
    """POSIX cost of what stays plus object cost of the stored estimate."""
    cost_after_posix: float
    cost_after_low: float
    cost_after_high: float

    @property
    def saving(self) -> float:
        return self.cost_before - self.cost_after


def make_row(
    label: str,
    after: dt.timedelta,
    homes: Sequence[HomeScan],
    chosen: set[int],
    est: Estimate,
    prices: Prices,
) -> Row:
    total = sum(h.bytes for h in homes)
    nbytes = sum(homes[i].bytes for i in chosen)
    stored = nbytes * est.ratio
    low = nbytes * max(0.0, est.ratio - est.tolerance)
    high = nbytes * (est.ratio + est.tolerance)
    posix_after = monthly_cost(total - nbytes, prices.posix)
    return Row(
        label=label,
        after=after,
        homes=len(chosen),
        files=sum(homes[i].files for i in chosen),
        bytes=nbytes,
        allocated=sum(homes[i].allocated for i in chosen),
        estimate=est,
        stored=stored,
        stored_low=low,
        stored_high=high,
        cost_before=monthly_cost(total, prices.posix),
        cost_after=posix_after + monthly_cost(stored, prices.object),
        cost_after_posix=posix_after,
        cost_after_low=posix_after + monthly_cost(low, prices.object),
        cost_after_high=posix_after + monthly_cost(high, prices.object),
    )


@dataclass
class Plan:
    scan: HomesScan
    now: dt.datetime
    facts: list[HomeFacts]
    rows: list[Row]
    prices: Prices
    readings: SampleReadings | None
    hub_url: str | None = None
    moved_at: list[str | None] = field(default_factory=list)
    """Per home: the largest threshold at which it would move (None: at none)."""


def decide(
    scan: HomesScan,
    now: dt.datetime,
    thresholds: Sequence[tuple[str, dt.timedelta]],
    hub: dict[str, HubUser] | None = None,
    policy: Policy | None = None,
) -> tuple[list[HomeFacts], list[set[int]]]:
    """The facts per home and, per threshold, the homes that would move."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    facts = home_facts(scan.homes, hub)
    policy = policy or Policy()
    return facts, [moved(facts, now, after, policy) for _, after in thresholds]


def make_plan(
    scan: HomesScan,
    readings: SampleReadings | None,
    now: dt.datetime,
    thresholds: Sequence[tuple[str, dt.timedelta]],
    prices: Prices,
    *,
    hub: dict[str, HubUser] | None = None,
    hub_url: str | None = None,
    policy: Policy | None = None,
) -> Plan:
    """Rows per threshold from a scan and its readings (no I/O, no clock)."""
    facts, sets = decide(scan, now, thresholds, hub, policy)
    wider = set().union(*sets) if sets else set()
    rows = []
    for (label, after), chosen in zip(thresholds, sets, strict=True):
        if readings is None:
            est = Estimate(1.0, 0.0, 0, 0, 0, "none")
        else:
            est = estimate(readings, chosen, wider)
        rows.append(make_row(label, after, scan.homes, chosen, est, prices))
    moved_at: list[str | None] = [None] * len(scan.homes)
    for (label, _), chosen in zip(thresholds, sets, strict=True):
        for i in chosen:
            moved_at[i] = label
    return Plan(scan, now, facts, rows, prices, readings, hub_url, moved_at)
