"""Incremental backups keep the parent's extended attributes of an entry whose ctime did
not move, without listing them again; every change of an attribute moves the ctime (this
test checks the kernel does so here), so a changed attribute is always seen. Entries
whose ctime is close to the parent's start ("racy") are read again.
"""

from __future__ import annotations

import importlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.engine.fsutil import rename_exchange
from hometier.repo import Repository
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree

archive_mod = importlib.import_module("hometier.engine.archive")


def _tree(root: Path) -> Path:
    for d in ("a", "b", "a/c"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(40):
        f = root / ("a" if i % 2 else "b") / f"f{i}"
        f.write_bytes(b"x" * i)
        if i % 3 == 0:
            os.setxattr(f, "user.origin", b"v1-%d" % i)
    os.setxattr(root / "a", "user.dir", b"d1")
    return root


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The paths whose attributes a backup lists."""
    seen: list[bytes] = []
    real = archive_mod.read_xattrs

    def spy(target: Any) -> Any:
        seen.append(target)
        return real(target)

    monkeypatch.setattr(archive_mod, "read_xattrs", spy)
    yield seen


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def test_every_change_of_an_attribute_moves_the_ctime(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    if not _xattrs_supported(tmp_path):
        pytest.skip("this filesystem has no user.* attributes")
    steps = [
        lambda: os.setxattr(f, "user.a", b"1"),
        lambda: os.setxattr(f, "user.a", b"2"),  # same name, new value
        lambda: os.setxattr(f, "user.a", b"2"),  # same value again: may change nothing
        lambda: os.setxattr(f, "user.b", b""),  # empty value
        lambda: os.removexattr(f, "user.a"),
    ]

    def attrs() -> dict[str, bytes]:
        return {n: os.getxattr(f, n) for n in os.listxattr(f)}

    for i, step in enumerate(steps):
        before, then = os.lstat(f).st_ctime_ns, attrs()
        time.sleep(0.02)  # past the kernel's timestamp granularity
        step()
        if attrs() != then:
            assert os.lstat(f).st_ctime_ns > before, f"step {i} changed attributes, not ctime"


def test_unchanged_entries_keep_their_attributes_unlisted_and_changes_are_seen(
    tmp_path: Path, listed: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "home")
    if not _xattrs_supported(src):
        pytest.skip("this filesystem has no user.* attributes")
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))
    first = backup(repo, src, user="u")
    assert len(listed) >= 43  # every entry, the root too
    # The parent's start is long past for every entry (instead of waiting RACY_NS).
    monkeypatch.setattr(archive_mod, "RACY_NS", -(10**12))
    time.sleep(0.02)
    os.setxattr(src / "a" / "f3", "user.origin", b"v2")  # changed value
    os.setxattr(src / "b" / "f4", "user.new", b"n")  # new attribute
    os.removexattr(src / "b" / "f6", "user.origin")  # removed
    os.setxattr(src / "a", "user.dir", b"d2")  # on a folder
    listed.clear()
    second = backup(repo, src, user="u", parent=first)
    names = sorted(os.fsdecode(p).rsplit("/", 1)[-1] for p in listed)
    # the root, and the four entries whose ctime moved; nothing else was listed
    assert names == ["a", "f3", "f4", "f6", "home"], names
    restore(repo, second, tmp_path / "r")
    assert_same_tree(snapshot_of_tree(src), snapshot_of_tree(tmp_path / "r"))


def test_racy_entries_are_listed_again(tmp_path: Path, listed: list[bytes]) -> None:
    """Right after the parent (the default RACY_NS), every entry is too recent to trust."""
    src = _tree(tmp_path / "home")
    if not _xattrs_supported(src):
        pytest.skip("this filesystem has no user.* attributes")
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))
    first = backup(repo, src, user="u")
    n = len(listed)
    listed.clear()
    backup(repo, src, user="u", parent=first)
    assert len(listed) == n


def test_hard_links_and_replaced_files_keep_their_own_attributes(
    tmp_path: Path, listed: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries the skip could get wrong: a hard link whose other name comes first in
    the walk once a folder is renamed (the inode's ctime does not move, and the name's
    node in the parent was a link); a file replaced by another whose attributes differ
    (``rename`` over it, and a ``RENAME_EXCHANGE`` of two files with the same ctime)."""
    src = tmp_path / "home"
    for d in ("a", "z", "s"):
        (src / d).mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"linked")
    if not _xattrs_supported(src):
        pytest.skip("this filesystem has no user.* attributes")
    os.setxattr(src / "a" / "f", "user.who", b"the inode")
    os.link(src / "a" / "f", src / "z" / "g")
    for name, value in (("one", b"1"), ("two", b"2"), ("three", b"3"), ("new", b"n")):
        (src / "s" / name).write_bytes(b"same size")
        os.setxattr(src / "s" / name, "user.who", value)
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))
    first = backup(repo, src, user="u")
    monkeypatch.setattr(archive_mod, "RACY_NS", -(10**12))  # trust every old ctime
    time.sleep(0.02)
    os.rename(src / "a", src / "zz")  # z/g is now the inode's first name in the walk
    os.rename(src / "s" / "new", src / "s" / "one")  # replaced by a file of other attributes
    assert rename_exchange(
        b"two", b"three", a_dir_fd=(fd := os.open(src / "s", os.O_RDONLY)), b_dir_fd=fd
    )
    os.close(fd)
    listed.clear()
    second = backup(repo, src, user="u", parent=first)
    assert {p.rsplit(b"/", 1)[-1] for p in listed} >= {b"one", b"two", b"three"}
    restore(repo, second, tmp_path / "r")
    assert_same_tree(snapshot_of_tree(src), snapshot_of_tree(tmp_path / "r"))
    assert os.getxattr(tmp_path / "r" / "z" / "g", "user.who") == b"the inode"
    assert os.getxattr(tmp_path / "r" / "s" / "one", "user.who") == b"n"
    assert os.getxattr(tmp_path / "r" / "s" / "two", "user.who") == b"3"
