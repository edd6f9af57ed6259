"""The hub's homes at the start of the semester, drawn from the corpus generator.

``make_corpus.py`` writes a course hub's homes with everything hometier must keep
(notebooks with outputs and checkpoints, CSV, incompressible and partly compressible
binaries, a real git repository, SQLite histories, symlinks absolute, relative and
dangling, a hard link pair, an empty folder, a name that is not UTF-8, modes 0600 to
0755, a ``pip --user`` tree and a course folder shared by most homes). Its generators are
too slow for 2,000 homes (a notebook takes tens of milliseconds), so ``bases`` homes are
generated with it at a small ``scale`` and every user's home is *drawn* from one of them
(seeded) and made the user's own:

- the course folder, the ``pip`` tree, ``.cache`` and the dotfiles stay byte-identical
  copies (as on a real hub: nbgitpuller, ``pip install --user``), the ``pip`` tree in
  a tenth of the homes only and ``.cache`` cut to a few dozen files (file counts, not
  bytes, drive the replay's time);
- every personal file (notebooks, data, scripts, projects, outputs, top-level files) is
  changed for the user: a notebook gets a cell of its own, a text file a line every 128
  KiB, a binary file new bytes of the same kind and size, an SSH key new bytes; so
  users share no personal content (dedup finds only what real hubs share);
- and a seeded, long-tailed amount of the user's own data (``own_bytes``) is added
  under ``data/``.

Times, modes and the owner (1000:100 as root, like z2jh's jovyan) come from the base.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from semester_volume import Volume, loop_available  # noqa: E402

mc = benchlib.make_corpus()

UID, GID = mc.UID, mc.GID
PERSONAL_TOP = {
    b"work", b"homework", b"projects", b"notebooks", b"data", b"outputs", b"scripts",
    b"models", b"datasets", b"climate",
}  # fmt: skip
TEXT_EXT = {b".csv", b".py", b".md", b".txt", b".sh", b".env", b""}
CACHE_KEEP = 10
BINARY_CAP = 4_000_000
"""A personal binary file of the base larger than this (a model checkpoint) is redrawn at
this size: the generator does not scale checkpoints, and the tail comes from ``own_bytes``."""
VENV = b".local/lib"
COURSE = b"ds101-course-materials"
CORPUS_VERSION = 1

Manifest = dict[bytes, tuple[Any, ...]]


@dataclass
class Corpus:
    """The pristine homes (a volume) and what the replay needs to know about them."""

    key: str
    root: Path
    volume: Volume
    manifests: dict[str, Manifest]
    """User → every entry of their home at the start (``benchlib.manifest`` shape)."""
    template: Path
    """A new user's home (dotfiles and the course folder), copied at their first login."""
    summary: dict[str, Any]

    def size(self, user: str) -> int:
        return manifest_bytes(self.manifests[user])


def manifest_bytes(m: Manifest) -> int:
    """Apparent bytes of the regular files (a hard-linked file once)."""
    return sum(e[6] for rel, e in m.items() if e[0] == "file" and e[8] in (None, rel))


VENV_PACKAGES = b".local/lib/python3.11/site-packages"
VENV_KEEP = (b"tabkit", b"plotwise")
"""Two of the generator's twelve packages: a ``pip --user`` tree of a few hundred files."""


def _venv_kept(rel: bytes) -> bool:
    name = rel[len(VENV_PACKAGES) + 1 :].split(b"/", 1)[0]
    return name.startswith(VENV_KEEP)


def _cache_subset(base: bytes, rng: random.Random) -> tuple[set[bytes], set[bytes]]:
    """``CACHE_KEEP`` files of the base's ``.cache`` (seeded) and the folders above them."""
    found: list[bytes] = []
    top = os.path.join(base, b".cache")
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), base))
    found.sort()
    keep = set(rng.sample(found, min(CACHE_KEEP, len(found))))
    dirs = set()
    for rel in keep:
        parent = os.path.dirname(rel)
        while parent and parent != b".cache":
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return keep, dirs


def _is_personal(rel: bytes) -> bool:
    top = rel.split(b"/", 1)[0]
    if b"/.git/" in rel or rel.startswith(b".git/"):
        return False
    return top in PERSONAL_TOP or (b"/" not in rel and not rel.startswith(b"."))


def mutate(data: bytes, rel: bytes, rng: random.Random, tag: str) -> bytes:
    """The user's own version of a file of the base (see the module doc)."""
    ext = os.path.splitext(rel)[1].lower()
    mark = f"{tag} {rng.getrandbits(64):016x}"
    if ext == b".ipynb":
        cell = json.dumps(
            {
                "cell_type": "markdown",
                "id": f"{rng.getrandbits(32):08x}",
                "metadata": {},
                "source": [f"Notes of {mark}"],
            }
        ).encode()
        head = b'"cells": ['
        at = data.find(head)
        if at >= 0:
            at += len(head)
            return data[:at] + b"\n  " + cell + b"," + data[at:]
        return data + b"\n"
    if ext in TEXT_EXT and (not data or b"\x00" not in data[:4096]):
        out, pos = [], 0
        step = 128 * 1024
        first = rng.randrange(max(1, min(len(data), step)))
        cut = first
        while True:
            nl = data.find(b"\n", cut)
            if nl < 0:
                break
            out.append(data[pos : nl + 1])
            out.append(f"# {mark} {len(out)}\n".encode())
            pos = nl + 1
            cut = pos + step
        out.append(data[pos:])
        if len(out) == 1:
            return data + f"\n# {mark}\n".encode()
        return b"".join(out)
    kind = ext.lstrip(b".").decode(errors="replace") or "bin"
    return bytes(mc.binary_blob(rng, min(len(data), BINARY_CAP), kind))


def _write(path: bytes, data: bytes, st: os.stat_result, own: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if own:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def assemble(
    dst: bytes,
    base: bytes,
    user: str,
    rng: random.Random,
    *,
    venv: bool,
    fresh: bool = False,
) -> None:
    """``dst`` (absent) becomes ``user``'s version of the home ``base``; with ``fresh``,
    only what a new user starts with (dotfiles and the course folder)."""
    own = os.geteuid() == 0
    inodes: dict[int, bytes] = {}
    dirs: list[tuple[bytes, os.stat_result]] = []
    cache, cache_dirs = _cache_subset(base, rng)
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = b"" if rel_dir == b"." else rel_dir
        keep_dirs = []
        for name in sorted(dirnames):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if os.path.islink(os.path.join(dirpath, name)):
                filenames.append(name)
            elif rel == VENV and not venv:
                continue
            elif rel.startswith(b".cache/") and rel not in cache_dirs:
                continue
            elif rel.startswith(VENV_PACKAGES + b"/") and not _venv_kept(rel):
                continue
            elif fresh and not rel_dir and name not in (COURSE,) and not name.startswith(b"."):
                continue
            else:
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        target_dir = os.path.join(dst, rel_dir) if rel_dir else dst
        st_dir = os.lstat(dirpath)
        os.mkdir(target_dir, 0o700)
        dirs.append((target_dir, st_dir))
        in_cache = rel_dir == b".cache" or rel_dir.startswith(b".cache/")
        for name in sorted(filenames):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            src = os.path.join(dirpath, name)
            out = os.path.join(target_dir, name)
            st = os.lstat(src)
            if fresh and not rel_dir and not name.startswith(b"."):
                continue
            if in_cache and rel not in cache:
                continue
            if rel_dir == VENV_PACKAGES and not _venv_kept(rel):
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), out)
                if own:
                    os.lchown(out, st.st_uid, st.st_gid)
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_nlink > 1 and st.st_ino in inodes:
                os.link(inodes[st.st_ino], out)
                continue
            with open(src, "rb") as f:
                data = f.read()
            if name == b".gitconfig":
                data = f"[user]\n\tname = {user}\n\temail = {user}@example.edu\n".encode()
            elif rel.startswith(b".ssh/id_"):
                data = bytes(mc.binary_blob(rng, len(data), "key"))
            elif _is_personal(rel) or name in (b".bash_history", b".python_history"):
                data = mutate(data, rel, rng, user)
            _write(out, data, st, own)
            inodes[st.st_ino] = out
    for path, st in reversed(dirs):
        if own:
            os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def add_own_data(home: bytes, rng: random.Random, nbytes: int, mtime_ns: int) -> None:
    """The user's own files under ``data/`` (a few, of ``nbytes`` in all)."""
    own = os.geteuid() == 0
    folder = os.path.join(home, b"data")
    made = not os.path.isdir(folder)
    if made:
        os.mkdir(folder, 0o755)
    left, i = nbytes, 0
    while left > 0:
        size = min(left, max(4096, int(rng.lognormvariate(12.5, 1.0))))
        kind = rng.choice(["npy", "parquet", "pkl", "nc", "zip"])
        path = os.path.join(folder, f"own-{i:02d}.{kind}".encode())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(bytes(mc.binary_blob(rng, size, kind)))
            while view:
                view = view[os.write(fd, view) :]
            if own:
                os.fchown(fd, UID, GID)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        left -= size
        i += 1
    if own:
        os.chown(folder, UID, GID)
    os.utime(folder, ns=(mtime_ns, mtime_ns))
    if made:
        os.utime(home, ns=(mtime_ns, mtime_ns))


def own_bytes(rng: random.Random, scale: float) -> int:
    """The user's own data: a median of 100 KB, one user in a hundred 10 to 30 MB (all
    times ``scale / 0.005``)."""
    factor = scale / 0.005
    if rng.random() < 0.01:
        return int(rng.uniform(10e6, 30e6) * factor)
    return int(min(10e6, rng.lognormvariate(0, 1.2) * 100e3) * factor)


def build_course(dst: Path, seed: str, scale: float) -> None:
    """``make_corpus.build_course_template`` with fewer rendered figures: at a small
    scale its lecture notebooks are mostly base64 PNGs (a home gets a copy of them)."""
    rng = mc.R(seed, "course")
    mc.write(
        dst / "README.md",
        "# Data Science 101\n\n" + "\n\n".join(mc.sentence(rng, 10, 30) for _ in range(20)) + "\n",
    )
    mc.write(
        dst / "LICENSE",
        "BSD 3-Clause License\n\n" + "\n".join(mc.sentence(rng) for _ in range(25)) + "\n",
    )
    mc.write(
        dst / "requirements.txt", "pandas>=2.1\nnumpy>=1.26\nmatplotlib>=3.8\nscikit-learn>=1.3\n"
    )
    mc.write(dst / "utils" / "helpers.py", mc.py_source(rng, 12_000))
    mc.write(dst / "utils" / "__init__.py", "")
    for i in range(1, 13):
        size = int(mc.lognorm(rng, 350_000, 0.6, 100_000, 1_300_000) * scale)
        name = f"{i:02d}-{rng.choice(mc.WORDS)}-{rng.choice(mc.WORDS)}.ipynb"
        mc.write(dst / "lectures" / name, mc.notebook(rng, size, with_outputs=i % 4 == 1))
    for i in range(1, 9):
        size = int(mc.lognorm(rng, 150_000, 0.5, 40_000, 500_000) * scale)
        mc.write(dst / "labs" / f"lab{i:02d}.ipynb", mc.notebook(rng, size, with_outputs=False))
    for i in range(1, 5):
        size = int(mc.lognorm(rng, 1_000_000, 0.5, 250_000, 2_500_000) * scale)
        mc.write(dst / "data" / f"{rng.choice(mc.WORDS)}_{i}.csv", mc.csv_text(rng, size))
    mc.write(
        dst / "data" / "sample.parquet", mc.binary_blob(rng, int(900_000 * scale) + 1000, "parquet")
    )
    for i in range(1, 3):
        mc.write(dst / "images" / f"fig{i:02d}.png", mc.png_image(rng))
    mc.git(dst, "init", "-q")
    mc.git(dst, "add", "-A")
    mc.git(
        dst,
        "commit",
        "-q",
        "-m",
        "Course materials for spring term",
        date=mc.TERM_START + 86400 * 10,
    )
    mc.git(dst, "gc", "-q", "--prune=now")


def _pool() -> Any:
    """Worker processes for per-home work (forked: they inherit what is imported)."""
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(max(1, min(2, os.cpu_count() or 1)))


def _home(job: tuple[str, str, float, Path, Path]) -> None:
    """Build one user's home (``build_corpus``), in a worker process."""
    user, seed, scale, mnt, base = job
    urng = random.Random(f"{seed}|home|{user}")
    dst = os.fsencode(mnt / user)
    assemble(dst, os.fsencode(base), user, urng, venv=urng.random() < 0.1)
    mtime = mc.TERM_END * 10**9
    add_own_data(dst, urng, own_bytes(urng, scale), mtime - urng.randrange(90 * 86400) * 10**9)


def corpus_key(seed: str, users: list[str], scale: float, bases: int) -> str:
    h = hashlib.sha256(json.dumps([CORPUS_VERSION, seed, users, scale, bases]).encode())
    return h.hexdigest()[:12]


def build_corpus(
    work: Path,
    users: list[str],
    seed: str,
    scale: float,
    bases: int,
    log: Any = print,
) -> Corpus:
    """The pristine homes of ``users`` under ``work/corpus-<key>`` (reused when done)."""
    key = corpus_key(seed, users, scale, bases)
    root = work / f"corpus-{key}"
    image = root / "pristine.img" if loop_available() else None
    done = root / "corpus.pickle"
    mnt = root / "pristine"
    if done.exists():
        with open(done, "rb") as f:
            doc = pickle.load(f)
        vol = Volume(mnt, image, doc["empty_used"])
        vol.mount()
        log(f"corpus {key}: reused ({doc['summary']['homes']} homes)")
        return Corpus(key, root, vol, doc["manifests"], root / "template", doc["summary"])
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    base_dir = root / "bases"
    specs = mc.plan(seed, bases, scale)
    base_dir.mkdir()
    tpl = root / "tpl"
    tpl.mkdir()
    build_course(tpl / "course", seed, scale)
    mc.build_venv_template(tpl / "venv", seed)
    own = os.geteuid() == 0
    for spec in specs:
        mc.build_user(base_dir / spec["user"], spec, seed, tpl / "course", tpl / "venv", own)
    names = [s["user"] for s in specs]
    log(f"corpus {key}: {bases} base homes from make_corpus in {time.monotonic() - t0:.0f} s")
    vol = Volume.create(mnt, image)
    rng = random.Random(f"{seed}|semester-corpus")
    jobs = [(u, seed, scale, mnt, base_dir / names[rng.randrange(len(names))]) for u in users]
    # Each home depends only on its own seeded generator: two processes build them (the
    # Python per file is the cost, so threads would not help).
    with _pool() as pool:
        for i, _ in enumerate(pool.imap_unordered(_home, jobs, chunksize=8)):
            if (i + 1) % 250 == 0:
                log(f"corpus {key}: {i + 1}/{len(users)} homes, {time.monotonic() - t0:.0f} s")
    template = root / "template"
    assemble(
        os.fsencode(template), os.fsencode(base_dir / names[0]), "newuser",
        random.Random(f"{seed}|template"), venv=False, fresh=True,
    )  # fmt: skip
    with _pool() as pool:
        walked = pool.map(benchlib.manifest, [mnt / u for u in users], 8)
        manifests = dict(zip(users, walked, strict=True))
    sizes = sorted(manifest_bytes(m) for m in manifests.values())
    files = sum(sum(e[0] == "file" for e in m.values()) for m in manifests.values())
    summary = {
        "homes": len(users),
        "bases": bases,
        "scale": scale,
        "seed": seed,
        "files": files,
        "bytes": sum(sizes),
        "used_bytes": vol.used(),
        "home_bytes": {
            "min": sizes[0] if sizes else 0,
            "median": sizes[len(sizes) // 2] if sizes else 0,
            "p90": sizes[int(len(sizes) * 0.9)] if sizes else 0,
            "max": sizes[-1] if sizes else 0,
        },
        "seconds": round(time.monotonic() - t0, 1),
    }
    shutil.rmtree(base_dir)
    shutil.rmtree(tpl)
    with open(done, "wb") as f:
        pickle.dump({"manifests": manifests, "summary": summary, "empty_used": vol.empty_used}, f)
    log(
        f"corpus {key}: {len(users)} homes, {files:,} files, {sum(sizes) / 1e9:.2f} GB "
        f"in {summary['seconds']:.0f} s"
    )
    return Corpus(key, root, vol, manifests, template, summary)
