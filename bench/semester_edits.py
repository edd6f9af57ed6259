"""What users do to their homes while logged in, planned once and replayed on every volume.

Planning happens once per semester, on the *shadow* volume (a copy of the pristine homes
that hometier never touches): for each session, in time order, a few edits are drawn
(seeded) from the user's current files, applied to the shadow, and recorded as explicit
operations with their content in a content-addressed store (``blobs/``). Every policy's
replay then applies the same operations to its own homes at the same virtual times, so
all homes end the semester identical to the shadow, whatever the policy did meanwhile.

An edit, as JupyterLab and a shell would make it, with the virtual time as mtime:

- save a notebook (a new cell), written to a new file renamed over the old one;
- start a notebook: a copy of a course lab (or any notebook) under ``homework/``;
- add data under ``data/`` (binary, some partly compressible), now and then 10-20 MB;
- delete a file (a data file, a checkpoint, an old notebook);
- fill ``.cache/pip`` with a few small files.

Folders whose entries changed get the edit's time as mtime, on both volumes. Each
session's change to the user's manifest (``benchlib.manifest`` entries, from the shadow)
is kept, so the expected state of any home after its k-th session is known: that is what
every snapshot and every restored home is compared with.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import semester_corpus as sc

Manifest = sc.Manifest
Op = tuple[Any, ...]
"""("write", rel, sha, mode, mtime_ns) | ("unlink", rel) | ("mkdir", rel, mode)
| ("dirtime", rel, mtime_ns) | ("newhome",)"""


class Blobs:
    """Content by sha256, one file each (written once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        p = self.path(sha)
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(p)
        return sha

    def get(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()


@dataclass
class SessionEdit:
    user: str
    start: int
    """The session's start (seconds from T0)."""
    ops: list[Op]
    delta: dict[bytes, tuple[Any, ...] | None] = field(default_factory=dict)
    """What the user's manifest became: entry, or None for a removed path."""


def _is_target(rel: bytes, e: tuple[Any, ...]) -> bool:
    return (
        e[0] == "file"
        and e[8] is None
        and e[1] & 0o200
        and not rel.startswith((b".git/", sc.COURSE + b"/.git", b".local/", b".ssh/"))
        and b"/.git/" not in rel
    )


def plan_session(
    rng: random.Random, m: Manifest, home: bytes, blobs: Blobs, at_ns: int, end_ns: int, week: int
) -> list[Op]:
    """The operations of one session (from ``at_ns`` to ``end_ns``) on a home whose
    manifest is ``m`` (read from ``home`` for notebooks to edit)."""
    ops: list[Op] = []
    targets = [r for r, e in m.items() if _is_target(r, e)]
    notebooks = [r for r in targets if r.endswith(b".ipynb")]
    labs = [r for r in notebooks if r.startswith(sc.COURSE + b"/labs/")]
    made: set[bytes] = set()

    def ensure_dir(rel: bytes) -> None:
        parts = rel.split(b"/")[:-1]
        for i in range(1, len(parts) + 1):
            d = b"/".join(parts[:i])
            if d not in m and d not in made:
                ops.append(("mkdir", d, 0o755))
                made.add(d)

    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        at_ns = min(end_ns, at_ns + rng.randrange(60, 1800) * 10**9)
        r = rng.random()
        if r < 0.45 and notebooks:
            rel = rng.choice(notebooks)
            with open(os.path.join(home, rel), "rb") as f:
                data = sc.mutate(f.read(), rel, rng, f"week {week}")
            ops.append(("write", rel, blobs.put(data), m[rel][1] & 0o7777, at_ns))
        elif r < 0.70 and (labs or notebooks):
            src = rng.choice(labs or notebooks)
            with open(os.path.join(home, src), "rb") as f:
                data = sc.mutate(f.read(), src, rng, f"hw {week}")
            rel = b"homework/week%02d-%s" % (week, os.path.basename(src))
            if rel in m or rel in made:
                rel = rel[:-6] + b"-%04x.ipynb" % rng.getrandbits(16)
            ensure_dir(rel)
            made.add(rel)
            ops.append(("write", rel, blobs.put(data), 0o644, at_ns))
        elif r < 0.85:
            kind = rng.choice(["npy", "parquet", "pkl", "nc", "csv"])
            size = int(min(4e6, rng.lognormvariate(0, 1.3) * 60e3))
            if rng.random() < 0.01:
                size = rng.randrange(10_000_000, 20_000_000)
            rel = b"data/w%02d-%06x.%s" % (week, rng.getrandbits(24), kind.encode())
            ensure_dir(rel)
            made.add(rel)
            ops.append(
                ("write", rel, blobs.put(bytes(sc.mc.binary_blob(rng, size, kind))), 0o644, at_ns)
            )
        elif r < 0.95 and targets:
            victims = [t for t in targets if t.startswith((b"data/", b"work/", b"homework/"))]
            victims += [t for t in targets if b".ipynb_checkpoints/" in t]
            gone = {op[1] for op in ops if op[0] == "unlink"}
            victims = [v for v in victims if v not in gone and v not in made]
            if victims:
                rel = rng.choice(sorted(victims))
                ops = [op for op in ops if not (op[0] == "write" and op[1] == rel)]
                ops.append(("unlink", rel))
                if rel in notebooks:
                    notebooks.remove(rel)
        else:
            for _ in range(rng.randint(3, 12)):
                h = b"%056x" % rng.getrandbits(224)
                rel = b".cache/pip/http-v2/%c/%s" % (h[0], h)
                ensure_dir(rel)
                made.add(rel)
                ops.append(
                    ("write", rel, blobs.put(rng.randbytes(rng.randrange(200, 8000))), 0o644, at_ns)
                )
    touched = {
        os.path.dirname(op[1]) or b"." for op in ops if op[0] in ("write", "unlink", "mkdir")
    }
    ops.extend(("dirtime", d, at_ns) for d in sorted(touched, key=lambda d: -d.count(b"/")))
    return ops


def apply_ops(home: bytes, ops: list[Op], blobs: Blobs, user: str, template: Path) -> None:
    """Apply ``ops`` to the home folder ``home`` (as its owner would: 1000:100 as root)."""
    own = os.geteuid() == 0
    for op in ops:
        kind = op[0]
        if kind == "newhome":
            rng = random.Random(f"newhome|{user}")
            sc.assemble(home, os.fsencode(template), user, rng, venv=False)
        elif kind == "mkdir":
            path = os.path.join(home, op[1])
            os.mkdir(path, op[2])
            if own:
                os.chown(path, sc.UID, sc.GID)
        elif kind == "write":
            _, rel, sha, mode, mtime = op
            path = os.path.join(home, rel)
            tmp = os.path.join(os.path.dirname(path), b".~" + os.path.basename(path))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(blobs.get(sha))
                while view:
                    view = view[os.write(fd, view) :]
                if own:
                    os.fchown(fd, sc.UID, sc.GID)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
            os.rename(tmp, path)
        elif kind == "unlink":
            os.unlink(os.path.join(home, op[1]))
        elif kind == "dirtime":
            path = home if op[1] == b"." else os.path.join(home, op[1])
            os.utime(path, ns=(op[2], op[2]), follow_symlinks=False)
        else:
            raise ValueError(f"unknown operation {kind!r}")


def entry(home: bytes, rel: bytes, sha: str | None = None) -> tuple[Any, ...]:
    """``benchlib.manifest``'s entry for one path (a file's hash given or computed)."""
    path = home if rel == b"." else os.path.join(home, rel)
    st = os.lstat(path)
    xattrs = benchlib._xattrs(path)
    common = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)
    if stat.S_ISREG(st.st_mode):
        if sha is None:
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        return ("file", *common, st.st_size, sha, None)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", *common)
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", *common, os.readlink(path))
    return ("other", *common, st.st_rdev)


def delta_of(home: bytes, ops: list[Op]) -> dict[bytes, tuple[Any, ...] | None]:
    """The manifest entries the operations changed, read back from ``home``."""
    out: dict[bytes, tuple[Any, ...] | None] = {}
    for op in ops:
        kind = op[0]
        if kind == "write":
            out[op[1]] = entry(home, op[1], op[2])
        elif kind == "unlink":
            out[op[1]] = None
        elif kind in ("mkdir", "dirtime"):
            out[op[1]] = entry(home, op[1])
    return out


# --- the shadow pass ---------------------------------------------------------------------


@dataclass
class Semester:
    """Every session's edits, the shadow's size day by day, and the final manifests."""

    key: str
    t0_ns: int
    edits: dict[str, list[SessionEdit]]
    baseline: list[dict[str, int]]
    """Per day: ``used`` (bytes on the shadow volume, as df counts them) and
    ``apparent`` (file sizes): the homes volume without hometier."""
    shadow: Any
    blobs: Blobs
    check: dict[str, Any]
    """The shadow walked at the end against the manifests kept by the planner."""

    def manifest_at(self, start: Manifest | None, user: str, k: int) -> Manifest:
        """``user``'s manifest after their first ``k`` sessions (from ``start``)."""
        m = dict(start or {})
        for e in self.edits.get(user, [])[:k]:
            for rel, ent in e.delta.items():
                if ent is None:
                    m.pop(rel, None)
                else:
                    m[rel] = ent
        return m


def plan_semester(
    work: Path, corpus: sc.Corpus, trace: Any, t0_ns: int, log: Any = print
) -> Semester:
    """Plan and apply every session's edits on a shadow copy of the pristine homes;
    cached under ``work/semester-<key>`` (same corpus, trace and T0)."""
    import pickle
    import time

    key = hashlib.sha256(
        f"{corpus.key}|{trace.seed}|{len(trace.sessions)}|{trace.days}|{t0_ns}".encode()
    ).hexdigest()[:12]
    root = work / f"semester-{key}"
    done = root / "semester.pickle"
    image = root / "shadow.img" if corpus.volume.image is not None else None
    blobs = Blobs(root / "blobs")
    if done.exists():
        with open(done, "rb") as f:
            doc = pickle.load(f)
        shadow = sc.Volume(root / "shadow", image, corpus.volume.empty_used)
        shadow.mount()
        log(f"semester {key}: edits reused ({sum(len(v) for v in doc['edits'].values())} sessions)")
        return Semester(key, t0_ns, doc["edits"], doc["baseline"], shadow, blobs, doc["check"])
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    shadow = corpus.volume.copy(root / "shadow", image)
    manifests = {u: dict(m) for u, m in corpus.manifests.items()}
    apparent = sum(sc.manifest_bytes(m) for m in manifests.values())
    edits: dict[str, list[SessionEdit]] = {}
    baseline: list[dict[str, int]] = []
    day = 0
    sessions = trace.sessions
    for i, s in enumerate(sessions + [None]):
        while day <= trace.days and (s is None or s.start >= day * 86400):
            baseline.append({"day": day, "used": shadow.used(), "apparent": apparent})
            day += 1
        if s is None:
            break
        home = os.fsencode(shadow.path / s.user)
        rng = random.Random(f"{trace.seed}|edit|{s.user}|{s.start}")
        at_ns = t0_ns + s.start * 10**9
        week = s.start // (7 * 86400) + 1
        ops: list[Op] = []
        before = sc.manifest_bytes(manifests.get(s.user, {}))
        if s.user not in manifests:
            ops = [("newhome",), ("dirtime", b".", at_ns)]
            apply_ops(home, ops, blobs, s.user, corpus.template)
            manifests[s.user] = benchlib.manifest(shadow.path / s.user)
        m = manifests[s.user]
        end_ns = t0_ns + s.end * 10**9
        planned = plan_session(rng, m, home, blobs, at_ns, end_ns, week)
        apply_ops(home, planned, blobs, s.user, corpus.template)
        delta = dict(m) if ops else {}
        delta.update(delta_of(home, planned))
        for rel, ent in delta.items():
            if ent is None:
                m.pop(rel, None)
            else:
                m[rel] = ent
        edits.setdefault(s.user, []).append(SessionEdit(s.user, s.start, ops + planned, delta))
        apparent += sc.manifest_bytes(m) - before
        if (i + 1) % 5000 == 0:
            log(f"semester {key}: {i + 1}/{len(sessions)} sessions planned, "
                f"{time.monotonic() - started:.0f} s")  # fmt: skip
    check = compare_all(shadow.path, manifests)
    log(f"semester {key}: shadow checked against the planner's manifests: "
        f"{check['homes']} homes, {check['differences']} differences")  # fmt: skip
    with open(done, "wb") as f:
        pickle.dump({"edits": edits, "baseline": baseline, "check": check}, f)
    log(f"semester {key}: {len(sessions)} sessions planned in {time.monotonic() - started:.0f} s")
    return Semester(key, t0_ns, edits, baseline, shadow, blobs, check)


def compare_all(root: Path, manifests: dict[str, Manifest]) -> dict[str, Any]:
    """Every home under ``root`` walked and compared with its manifest."""
    diffs, examples = 0, []
    users = sorted(manifests)
    with sc._pool() as pool:  # walking is Python per entry: two processes
        walked = pool.imap(benchlib.manifest, [root / u for u in users], 8)
        found = dict(zip(users, walked, strict=True))
    for user in users:
        got = benchlib.compare(manifests[user], found[user])
        if not got["ok"]:
            diffs += sum(got["differences"].values())
            examples.extend(f"{user}: {e}" for e in got["examples"][:2])
    return {"homes": len(manifests), "differences": diffs, "examples": examples[:10]}
