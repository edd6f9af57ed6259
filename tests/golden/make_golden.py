#!/usr/bin/env python3
"""Build the golden repository ``tests/golden/repo-vN/`` and ``expected-vN.json``, N being
the format version this hometier writes (``repo.config.VERSION``).

The golden repository is format version N as hometier wrote it: later versions of
hometier must still check and restore it (``tests/unit/test_golden.py``), the way borg
keeps reading its ``repo12.tar.gz``. So this script is run ONCE per format version and
its output committed; running it again with a newer hometier would defeat the purpose
(it refuses to overwrite unless given ``--force``). A new format version gets a new
``repo-vN`` and ``expected-vN.json`` beside the old ones: ``repo-v1`` (written by a
pre-release build) and ``repo-v2`` (hometier 0.2: the same home, with its locator).

What is deterministic: the home (contents, modes, owners, mtimes, names) and the config
(id ``golden``, blob key ``bytes(range(32))``, creation time). What is not: the snapshot
time, and the ctime and inode numbers that trees record for the next incremental backup,
so pack, index and snapshot ids change from one run to the next.

Needs root (one file and one folder belong to uid 1000, a file is setuid) and a
filesystem with ``user.*`` extended attributes and sparse files (ext4, xfs, tmpfs).

    python3 tests/golden/make_golden.py [--force]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from hometier.engine import backup, check
from hometier.repo import Repository
from hometier.repo.config import VERSION, RepoConfig
from hometier.store import open_store

HERE = Path(__file__).resolve().parent
REPO_DIR = HERE / f"repo-v{VERSION}"
EXPECTED = HERE / f"expected-v{VERSION}.json"
CONFIG = RepoConfig(id="golden", blob_key=bytes(range(32)), created="2026-11-26T00:00:00Z")
USER = "golden"
HOSTNAME = "golden-host"
MiB = 1024 * 1024
T0 = 1_700_000_000_000_000_000  # 2023-11-14, ns
MAX_TOTAL = 200 * 1024


def _periodic(size: int) -> bytes:
    """``size`` bytes that the chunker cuts into several chunks but that compress well:
    one fixed 4 KiB block repeated, each copy preceded by its own counter line."""
    block = bytes((i * 7919 + (i >> 5) * 31) % 251 for i in range(4096))
    out = bytearray()
    i = 0
    while len(out) < size:
        out += f"block {i:08d}\n".encode() + block
        i += 1
    return bytes(out[:size])


# (relative path, kind, mode, payload); folders are listed before what they hold.
HOME: list[tuple[bytes, str, int, Any]] = [
    (
        b"README.txt",
        "file",
        0o644,
        f"This is the hometier golden home, format version {VERSION}.\n".encode(),
    ),
    (b"bin", "dir", 0o755, None),
    (b"bin/run.sh", "file", 0o755, b'#!/bin/sh\nexec python3 -m hometier "$@"\n'),
    (b"bin/setuid-tool", "file", 0o4755, b"#!/bin/sh\nid\n"),
    (b"data", "dir", 0o750, None),
    (b"data/chunked.bin", "file", 0o640, _periodic(9 * MiB + 4321)),
    (b"data/sparse.img", "sparse", 0o644, (8 * MiB, 4 * MiB, b"an island of data\n" * 200)),
    (b"empty-dir", "dir", 0o700, None),
    (b"notes", "dir", 0o700, None),
    (b"notes/empty.txt", "file", 0o600, b""),
    (b"notes/todo.md", "file", 0o600, b"# todo\n\n- keep reading format v1\n"),
    (b"notes/todo-hardlink.md", "hardlink", 0, b"notes/todo.md"),
    (b"notes/link-up", "symlink", 0, b"../README.txt"),
    (b"shared", "dir", 0o2775, None),
    (b"shared/by-another-user.txt", "file", 0o664, b"owned by uid 1000\n"),
    (b"tmp", "dir", 0o1777, None),
    (b"link-to-readme", "symlink", 0, b"README.txt"),
    (b"link-absolute-dangling", "symlink", 0, b"/nonexistent/golden/target"),
    (b"link-non-utf8", "symlink", 0, b"caf\xe9.txt"),
    (b"caf\xe9.txt", "file", 0o644, b"a name that is not UTF-8\n"),
    (b"line\nbreak.txt", "file", 0o644, b"a newline in the name\n"),
    ("snowman-\u2603.txt".encode(), "file", 0o644, "\u2603\n".encode()),
    (b"pipe", "fifo", 0o640, None),
]
OWNERS = {b"shared/by-another-user.txt": (1000, 1000), b"shared": (1000, 100)}
XATTRS = {
    b"README.txt": {b"user.comment": b"golden", b"user.binary": bytes([0, 1, 2, 255])},
    b"data": {b"user.folder": b"yes"},
}


def build_home(root: bytes) -> None:
    os.mkdir(root, 0o755)
    for rel, kind, _mode, payload in HOME:
        path = root + b"/" + rel
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            with open(path, "xb") as f:
                f.write(payload)
        elif kind == "sparse":
            size, offset, island = payload
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, size)
                os.pwrite(fd, island, offset)
            finally:
                os.close(fd)
        elif kind == "hardlink":
            os.link(root + b"/" + payload, path)
        elif kind == "symlink":
            os.symlink(payload, path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            raise ValueError(kind)
    for rel, (uid, gid) in OWNERS.items():
        os.chown(root + b"/" + rel, uid, gid, follow_symlinks=False)
    for rel, kind, mode, _ in HOME:
        if kind not in ("hardlink", "symlink"):
            os.chmod(root + b"/" + rel, mode)  # after chown, which clears setuid
    for rel, attrs in XATTRS.items():
        for name, value in attrs.items():
            os.setxattr(root + b"/" + rel, name, value)
    # Times last, deepest first, so that setting them moves nothing already set.
    paths = sorted((rel for rel, *_ in HOME), key=lambda r: (-r.count(b"/"), r))
    for i, rel in enumerate(paths):
        ns = T0 + (i + 1) * 1_000_000_007
        os.utime(root + b"/" + rel, ns=(ns + 500, ns), follow_symlinks=False)
    os.chmod(root, 0o751)
    os.utime(root, ns=(T0 + 5, T0 + 123_456_789))


def _text(out: dict[str, Any], key: str, value: bytes) -> None:
    """Like the tree format: text when the bytes are UTF-8, else ``<key>_b64``."""
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(value).decode()


def _key(entry: dict[str, Any]) -> bytes:
    if "path" in entry:
        return str(entry["path"]).encode()
    return base64.b64decode(entry["path_b64"])


def describe_home(root: bytes) -> dict[str, Any]:
    """What a restore of the snapshot must reproduce, entry by entry."""
    entries = []
    inodes: dict[int, list[dict[str, Any]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = dirpath + b"/" + name
            rel = full[len(root) + 1 :]
            st = os.lstat(full)
            e: dict[str, Any] = {}
            _text(e, "path", rel)
            kind = {
                stat.S_IFREG: "file",
                stat.S_IFDIR: "dir",
                stat.S_IFLNK: "symlink",
                stat.S_IFIFO: "fifo",
            }[stat.S_IFMT(st.st_mode)]
            e["type"] = kind
            e["mode"] = stat.S_IMODE(st.st_mode)
            e["uid"], e["gid"] = st.st_uid, st.st_gid
            e["mtime_ns"] = st.st_mtime_ns
            if kind == "file":
                e["size"] = st.st_size
                e["sha256"] = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
                if st.st_blocks * 512 < st.st_size:
                    e["sparse"] = True
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(e)
            if kind == "symlink":
                _text(e, "target", os.readlink(full))
            else:
                attrs = {
                    n: os.getxattr(full, n, follow_symlinks=False)
                    for n in os.listxattr(full, follow_symlinks=False)
                    if n.startswith("user.")
                }
                if attrs:
                    e["xattrs"] = {
                        n: base64.b64encode(v).decode() for n, v in sorted(attrs.items())
                    }
            entries.append(e)
    # Names of one inode share a group number (numbered in path order).
    for n, group in enumerate(sorted(inodes.values(), key=lambda g: _key(g[0])), start=1):
        for e in group:
            e["hardlink_group"] = n
    st = os.lstat(root)
    return {
        "root": {
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
        },
        "entries": sorted(entries, key=_key),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help=f"replace an existing repo-v{VERSION}")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("make_golden.py needs root (owners, setuid)", file=sys.stderr)
        return 2
    if REPO_DIR.exists() or EXPECTED.exists():
        if not args.force:
            print(f"{REPO_DIR} exists: it is committed test data; --force replaces it")
            return 1
        shutil.rmtree(REPO_DIR, ignore_errors=True)
        EXPECTED.unlink(missing_ok=True)

    with tempfile.TemporaryDirectory(prefix="hometier-golden-") as tmp:
        home = os.fsencode(tmp) + b"/home"
        build_home(home)
        expected = describe_home(home)
        repo = Repository.create(open_store(f"file://{REPO_DIR}"), CONFIG)
        snap = backup(repo, os.fsdecode(home), user=USER, hostname=HOSTNAME)
        assert snap.stats.complete and not snap.stats.skipped, snap.stats
        assert describe_home(home) == expected, "the backup changed the home"
        check(repo, read_data=True)

    doc = {
        "format_version": VERSION,
        "repository_id": CONFIG.id,
        "blob_key_hex": CONFIG.blob_key.hex(),
        "user": USER,
        "hostname": HOSTNAME,
        "snapshot": snap.id,
        "tree": snap.tree.hex(),
        **expected,
    }
    EXPECTED.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in REPO_DIR.rglob("*") if p.is_file())
    print(f"wrote {REPO_DIR} ({total} bytes) and {EXPECTED}; snapshot {snap.id}")
    if total > MAX_TOTAL:
        print(f"repository is larger than {MAX_TOTAL} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
