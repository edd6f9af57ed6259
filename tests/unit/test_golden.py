"""The golden repository of format version 1 still checks and restores, byte for byte.

``tests/golden/repo-v1`` was written once by ``tests/golden/make_golden.py`` and is
committed; ``tests/golden/expected-v1.json`` describes the home it holds. Whatever
hometier becomes, it must keep reading it (borg's ``repo12.tar.gz``). The committed
folder is never opened directly: it is copied to a temporary folder first, and the test
checks that the copy in the source tree is unchanged afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import check, restore
from hometier.repo import Repository
from hometier.store import open_store

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
VERSIONS = sorted(int(p.name[len("repo-v") :]) for p in GOLDEN.glob("repo-v*") if p.is_dir())
IS_ROOT = os.geteuid() == 0


def _digest_folder(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _bytes(entry: dict[str, Any], key: str) -> bytes:
    if key in entry:
        return str(entry[key]).encode()
    return base64.b64decode(entry[key + "_b64"])


def _describe(full: bytes, expected: dict[str, Any]) -> dict[str, Any]:
    """The same fields as ``expected`` (one entry of expected-vN.json), read from disk."""
    st = os.lstat(full)
    kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
    got: dict[str, Any] = {
        "type": kinds.get(stat.S_IFMT(st.st_mode), "fifo" if stat.S_ISFIFO(st.st_mode) else "?"),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }
    if got["type"] == "file":
        got["size"] = st.st_size
        got["sha256"] = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
        if "sparse" in expected:
            got["sparse"] = st.st_blocks * 512 < st.st_size
    if got["type"] == "symlink":
        got["target"] = os.readlink(full)
    elif "xattrs" in expected:
        got["xattrs"] = {
            n: base64.b64encode(os.getxattr(full, n, follow_symlinks=False)).decode()
            for n in os.listxattr(full, follow_symlinks=False)
            if n.startswith("user.")
        }
    if not IS_ROOT:
        # Without root a restore cannot give files away; owners are not compared.
        got.pop("uid")
        got.pop("gid")
    return got


def _expected_fields(entry: dict[str, Any]) -> dict[str, Any]:
    want = {k: v for k, v in entry.items() if k not in ("path", "path_b64", "hardlink_group")}
    if "target" in want or "target_b64" in want:
        want.pop("target_b64", None)
        want["target"] = _bytes(entry, "target")
    if not IS_ROOT:
        want.pop("uid")
        want.pop("gid")
    return want


def test_there_is_a_golden_repository() -> None:
    assert VERSIONS, f"no repo-vN folder in {GOLDEN}"
    for v in VERSIONS:
        assert (GOLDEN / f"expected-v{v}.json").is_file()
        total = sum(p.stat().st_size for p in (GOLDEN / f"repo-v{v}").rglob("*") if p.is_file())
        assert total < 200 * 1024, f"repo-v{v} is {total} bytes: keep golden data small"


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_golden_repository_checks_and_restores(tmp_path: Path, version: int) -> None:
    source = GOLDEN / f"repo-v{version}"
    expected = json.loads((GOLDEN / f"expected-v{version}.json").read_text(encoding="utf-8"))
    before = _digest_folder(source)
    copy = tmp_path / "repo"
    shutil.copytree(source, copy)

    repo = Repository.open(open_store(f"file://{copy}"))
    assert repo.config.id == expected["repository_id"]
    assert repo.config.blob_key.hex() == expected["blob_key_hex"]
    report = check(repo, read_data=True)
    # Version 1 had no locators: check says how to add them (`hometier upgrade`).
    no_locator = ["1 snapshot(s) have no locator (run `hometier repair locators`)"]
    assert report.ok and report.snapshots == 1
    assert report.warnings == (no_locator if version < 2 else [])
    assert report.locators == (0 if version < 2 else 1)
    assert report.packs_read == report.packs >= 1

    (snap,) = repo.list_snapshots(expected["user"])
    assert snap.id == expected["snapshot"]
    assert snap.tree.hex() == expected["tree"]
    assert snap.hostname == expected["hostname"]
    assert repo.find_snapshot(snap.id[:8]).id == snap.id

    target = tmp_path / "restored"
    restore(repo, snap, target)

    root = os.fsencode(target)
    root_want = dict(expected["root"])
    root_st = os.lstat(root)
    root_got = {
        "mode": stat.S_IMODE(root_st.st_mode),
        "uid": root_st.st_uid,
        "gid": root_st.st_gid,
        "mtime_ns": root_st.st_mtime_ns,
    }
    if not IS_ROOT:
        for d in (root_want, root_got):
            d.pop("uid")
            d.pop("gid")
    assert root_got == root_want

    want_paths = {_bytes(e, "path") for e in expected["entries"]}
    got_paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            got_paths.add((dirpath + b"/" + name)[len(root) + 1 :])
    assert got_paths == want_paths

    groups: dict[int, set[int]] = {}
    for entry in expected["entries"]:
        rel = _bytes(entry, "path")
        full = root + b"/" + rel
        assert _describe(full, entry) == _expected_fields(entry), rel
        if "hardlink_group" in entry:
            groups.setdefault(entry["hardlink_group"], set()).add(os.lstat(full).st_ino)
    assert groups, "the golden home has hardlinks"
    assert all(len(inodes) == 1 for inodes in groups.values()), groups

    assert _digest_folder(source) == before, "the committed golden repository was modified"
