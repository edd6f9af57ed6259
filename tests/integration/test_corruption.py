"""Every object of a repository, damaged every way: check sees it and restore never lies.

A small home is backed up twice (the second time incrementally, so the repository holds
two packs, two index objects, two snapshots and their two locators besides the config; a
restore with a damaged locator falls back to the index). Then, in a fresh copy
of that repository, one object at a time is damaged in one of five ways, and:

- ``check(read_data=True)`` must raise (structure-only check too, where it can see it);
- restoring each snapshot must either raise a hometier ``Error`` with a one-line message,
  leaving the target absent (or still empty) and no staging folder behind, or succeed
  with exactly the original bytes (a damaged blob that snapshot does not need).

Deleting a snapshot document is the one damage nothing can see: the repository is then
exactly what it would be had the snapshot been forgotten. That case asserts just that.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import CheckFailed, RestoreError, backup, check, restore
from hometier.errors import Error
from hometier.repo import BlobType, Repository
from hometier.repo.pack import parse_trailer
from hometier.repo.repository import SnapshotNotFound
from hometier.repo.snapshot import Snapshot
from hometier.store import Store, open_store
from hometier.store.base import Retry
from treeutil import assert_same_tree, snapshot_of_tree

STAGING = ".hometier-restore-"
# Permanent errors must raise at once; a misclassified one shows up in stats.retries.
FAST = Retry(attempts=2, base=0.01, cap=0.02)
BIG = 5 * 1024 * 1024 + 12345  # above Chunking.max (4 MiB): always at least two chunks

ROLES = [
    "config",
    "pack-1",
    "pack-2",
    "treepack-1",
    "treepack-2",
    "index-1",
    "index-2",
    "snapshot-1",
    "snapshot-2",
    "locator-1",
    "locator-2",
]


# --- the damage ----------------------------------------------------------------------


def _flip(data: bytes) -> bytes | None:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]


def _half(data: bytes) -> bytes | None:
    return data[: len(data) // 2]


def _short(data: bytes) -> bytes | None:
    return data[:-1]


def _delete(data: bytes) -> bytes | None:
    return None


def _zeros(data: bytes) -> bytes | None:
    return bytes(len(data))


DAMAGE: dict[str, Callable[[bytes], bytes | None]] = {
    "flip": _flip,
    "half": _half,
    "short": _short,
    "delete": _delete,
    "zeros": _zeros,
}


# --- the home ---------------------------------------------------------------------------


def _make_home(src: Path) -> None:
    rng = random.Random(20261126)
    (src / "docs" / "notes").mkdir(parents=True)
    (src / "code").mkdir()
    (src / "empty").mkdir()
    (src / "big.bin").write_bytes(rng.randbytes(BIG))
    (src / "docs" / "readme.txt").write_bytes(b"read me, please\n" * 500)
    (src / "docs" / "notes" / "deep.txt").write_bytes(b"deep down\n")
    (src / "code" / "main.py").write_bytes(b"print('hello')\n")
    (src / "code" / "run.sh").write_bytes(b"#!/bin/sh\nexec python3 main.py\n")
    (src / "code" / "run.sh").chmod(0o755)
    os.link(src / "docs" / "readme.txt", src / "readme-hardlink.txt")
    os.symlink("docs/readme.txt", src / "readme-link")
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):
        mtime = 1_700_000_000_000_000_000 + i * 1001
        os.utime(path, ns=(mtime - 7, mtime), follow_symlinks=False)


# --- the pristine repository, built once -------------------------------------------------


@dataclass
class Pristine:
    folder: Path
    keys: dict[str, str]
    """Role (``pack-1``, ``snapshot-2``...) -> object key."""
    snaps: list[str]
    """Snapshot ids, oldest first."""
    expected: dict[str, dict[Any, Any]]
    """Snapshot id -> listing of the home as it was backed up."""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("pristine")
    src = base / "home"
    src.mkdir()
    _make_home(src)
    folder = base / "repo"
    repo, _ = Repository.open_or_create(open_store(f"file://{folder}"))

    s1 = backup_home(repo, src)
    big = next(n for n in repo.load_tree(s1.tree) if n.name == b"big.bin")
    assert len(big.content) >= 2, "the big file was not chunked"
    keys1 = {o.key for o in repo.store.list("")}
    expected = {s1.id: snapshot_of_tree(src)}

    (src / "code" / "main.py").write_bytes(b"print('hello, again')\n")
    (src / "code" / "new.txt").write_bytes(b"a new file\n" * 20)
    os.utime(src / "code" / "main.py", ns=(1_800_000_000_000_000_000,) * 2)
    s2 = backup_home(repo, src, parent=s1)
    keys2 = {o.key for o in repo.store.list("")} - keys1
    expected[s2.id] = snapshot_of_tree(src)

    keys = {"config": "config"}
    for n, group in ((1, keys1), (2, keys2)):
        packs = sorted(k for k in group if k.startswith("packs/"))
        # Every backup writes its file data and its trees into separate packs.
        kinds = {_pack_kind(repo, k): k for k in packs}
        assert len(packs) == 2 and set(kinds) == {"pack", "treepack"}, f"backup {n}: {packs}"
        for kind, key in kinds.items():
            keys[f"{kind}-{n}"] = key
        for prefix, role in (
            ("index/", "index"),
            ("snapshots/", "snapshot"),
            ("locators/", "locator"),
        ):
            found = sorted(k for k in group if k.startswith(prefix))
            assert len(found) == 1, f"backup {n} wrote {found} under {prefix}"
            keys[f"{role}-{n}"] = found[0]
    assert sorted(keys) == sorted(ROLES), keys
    assert {o.key for o in repo.store.list("")} == set(keys.values())
    check(repo, read_data=True)
    return Pristine(folder, keys, [s1.id, s2.id], expected)


def _pack_kind(repo: Repository, key: str) -> str:
    data = repo.store.get(key)
    types = {e.type for e in parse_trailer(data, len(data))}
    return "treepack" if types == {BlobType.TREE} else "pack"


def backup_home(repo: Repository, src: Path, parent: Snapshot | None = None) -> Snapshot:
    return backup(repo, src, user="alice", hostname="test", parent=parent)


# --- running check and restore on a damaged copy ----------------------------------------


def _attempt_check(url: str, *, read_data: bool) -> Error | None:
    try:
        repo = Repository.open(open_store(url, retry=FAST))
        check(repo, read_data=read_data)
    except Error as exc:
        return exc
    return None


def _assert_clear(exc: Error) -> None:
    msg = str(exc)
    assert msg.strip(), f"{type(exc).__name__} has an empty message"
    assert "\n" not in msg.strip(), f"message is not one line: {msg!r}"
    assert len(msg) < 1000, f"message is too long: {msg!r}"
    for noise in ("Traceback", "Debug source", "PanicException", "panicked at"):
        assert noise not in msg, f"message leaks internals: {msg!r}"


def _staging_left(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [str(folder / n) for n in os.listdir(folder) if n.startswith(STAGING)]
    return found


def restore_and_judge(
    url: str, sid: str, expected: dict[Any, Any], target: Path, *, existing: bool
) -> str:
    """Restore snapshot ``sid`` into ``target``; return ``"ok"`` or ``"failed"``.

    Fails the test if the restore succeeded with anything but ``expected``, raised
    anything but a clear hometier ``Error``, or left the target or a staging folder.
    """
    if existing:
        target.mkdir()
    store: Store | None = None
    try:
        store = open_store(url, retry=FAST)
        repo = Repository.open(store)
        snap = repo.find_snapshot(sid)
        restore(repo, snap, target)
    except Error as exc:
        _assert_clear(exc)
        if isinstance(exc, RestoreError):
            assert str(exc).startswith(f"Restore of snapshot {sid[:12]}"), str(exc)
        if existing:
            assert target.is_dir() and not target.is_symlink()
            assert os.listdir(target) == [], f"failed restore left {os.listdir(target)}"
        else:
            assert not os.path.lexists(target), "failed restore left the target behind"
        assert _staging_left(target.parent, target) == []
        if store is not None and url.startswith("file://"):
            assert store.stats.retries == 0, "a permanent error was retried"
        return "failed"
    assert _staging_left(target.parent, target) == []
    # A restore that succeeds must have restored exactly what was backed up.
    assert_same_tree(expected, snapshot_of_tree(target))
    return "ok"


def _damaged_copy(pristine: Pristine, tmp_path: Path, role: str, mode: str) -> str:
    folder = tmp_path / "repo"
    shutil.copytree(pristine.folder, folder, symlinks=True)
    path = folder / pristine.keys[role]
    new = DAMAGE[mode](path.read_bytes())
    if new is None:
        path.unlink()
    else:
        path.write_bytes(new)
    return f"file://{folder}"


def _must_structure_check_see_it(role: str, mode: str) -> bool:
    if role.startswith("pack-"):
        # The index records each pack's size, so only a change of size or a missing pack
        # is visible without reading the data.
        return mode in ("half", "short", "delete")
    return True


def _judge_all(pristine: Pristine, url: str, work: Path) -> dict[str, str]:
    """Restore every snapshot (the first into an absent target, the second into an empty
    one); snapshot id -> ``"ok"`` or ``"failed"``."""
    outcomes = {}
    for i, sid in enumerate(pristine.snaps):
        target = work / f"restored-{i + 1}"
        outcomes[sid] = restore_and_judge(
            url, sid, pristine.expected[sid], target, existing=bool(i % 2)
        )
    return outcomes


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(DAMAGE))
@pytest.mark.parametrize("role", ROLES)
def test_damaged_object_is_detected_and_never_restored_wrong(
    pristine: Pristine, tmp_path: Path, role: str, mode: str
) -> None:
    url = _damaged_copy(pristine, tmp_path, role, mode)
    work = tmp_path / "work"
    work.mkdir()

    if role.startswith("snapshot-") and mode == "delete":
        # Indistinguishable from a snapshot that was forgotten: check passes, the other
        # snapshot restores exactly, and the deleted one is simply not found.
        assert _attempt_check(url, read_data=True) is None
        gone = pristine.snaps[int(role[-1]) - 1]
        repo = Repository.open(open_store(url))
        with pytest.raises(SnapshotNotFound):
            repo.find_snapshot(gone)
        outcomes = _judge_all(pristine, url, work)
        assert outcomes[gone] == "failed"
        assert [o for s, o in outcomes.items() if s != gone] == ["ok"]
        return

    found = _attempt_check(url, read_data=True)
    assert found is not None, "check(read_data=True) did not notice the damage"
    _assert_clear(found)
    if _must_structure_check_see_it(role, mode):
        assert _attempt_check(url, read_data=False) is not None, (
            "structure-only check did not notice the damage"
        )

    outcomes = _judge_all(pristine, url, work)
    if role == "config":
        assert set(outcomes.values()) == {"failed"}
    if role == "pack-1" and mode in ("flip", "half", "delete", "zeros"):
        # Pack 1 holds the big file's chunks, which both snapshots need.
        assert set(outcomes.values()) == {"failed"}


# A sample on the real S3 server: ranged reads of a truncated object and missing keys
# behave differently there than on a local folder.
S3_SAMPLE = [
    ("pack-1", "half"),
    ("pack-1", "flip"),
    ("pack-1", "short"),
    ("pack-2", "delete"),
    ("index-1", "short"),
    ("index-2", "zeros"),
    ("snapshot-2", "flip"),
    ("config", "half"),
]


@pytest.mark.parametrize(("role", "mode"), S3_SAMPLE, ids=[f"{r}-{m}" for r, m in S3_SAMPLE])
def test_damaged_object_on_s3(
    pristine: Pristine, tmp_path: Path, s3_url: str, role: str, mode: str
) -> None:
    store = open_store(s3_url)
    for path in sorted(pristine.folder.rglob("*")):
        if not path.is_file():
            continue
        key = path.relative_to(pristine.folder).as_posix()
        data = path.read_bytes()
        if key == pristine.keys[role]:
            damaged = DAMAGE[mode](data)
            if damaged is None:
                continue
            data = damaged
        store.put(key, data)

    found = _attempt_check(s3_url, read_data=True)
    assert found is not None, "check(read_data=True) did not notice the damage"
    _assert_clear(found)
    if _must_structure_check_see_it(role, mode):
        assert _attempt_check(s3_url, read_data=False) is not None
    work = tmp_path / "work"
    work.mkdir()
    outcomes = _judge_all(pristine, s3_url, work)
    if role == "config" or (role == "pack-1" and mode != "short"):
        assert set(outcomes.values()) == {"failed"}


@pytest.mark.parametrize("role", ["index-2", "snapshot-2"])
def test_check_reports_damaged_metadata_as_check_failed(
    pristine: Pristine, tmp_path: Path, role: str
) -> None:
    """``check`` promises ``CheckFailed`` listing the problems: one damaged index or
    snapshot object must be reported as one problem among others, not abort the check
    before it has read any data."""
    url = _damaged_copy(pristine, tmp_path, role, "flip")
    # A second, independent problem in the data: check should report both.
    folder = Path(url[len("file://") :])
    pack = folder / pristine.keys["pack-1"]
    pack.write_bytes(_flip(pack.read_bytes()) or b"")
    repo = Repository.open(open_store(url))
    with pytest.raises(CheckFailed) as info:
        check(repo, read_data=True)
    assert info.value.args[0] >= 2, str(info.value)


def test_pristine_copy_restores_exactly(pristine: Pristine, tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    shutil.copytree(pristine.folder, folder)
    url = f"file://{folder}"
    assert _attempt_check(url, read_data=True) is None
    outcomes = _judge_all(pristine, url, tmp_path)
    assert set(outcomes.values()) == {"ok"}
