"""Sparse files in every layout survive archive and restore byte for byte, and stay sparse.

The bug this reproduces: finding a sparse file's data extents (``SEEK_DATA``/
``SEEK_HOLE``) leaves the file offset at the end, and the first extent was then read
from there when it started at offset 0 (``if off:`` skipped the seek): the file came
back as zeros, ``check --read-data`` passed, and when the last extent ended at EOF the
backup called the file "shrank while being read" and stored it empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import archive as engine_archive
from hometier.engine import backup, check, restore
from hometier.repo import Repository
from hometier.store import open_store

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB  # larger than any filesystem block here: holes stay holes


def _data(seed: int, n: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 + 1 for i in range(256)) * (n // 256) + b"x" * (n % 256)


def _make(path: Path, size: int, extents: list[tuple[int, int]]) -> bytes:
    """A file of ``size`` with data at ``extents`` (offset, length), holes elsewhere;
    returns its expected content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        for i, (off, ln) in enumerate(extents):
            os.pwrite(fd, _data(i + 1, ln), off)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        return f.read()


LAYOUTS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "data-at-0-hole-at-eof": (8 * MiB, [(0, BLOCK)]),
    "data-at-0-data-at-eof": (8 * MiB, [(0, BLOCK), (8 * MiB - BLOCK, BLOCK)]),
    "hole-at-0-data-at-eof": (8 * MiB, [(8 * MiB - BLOCK, BLOCK)]),
    "hole-at-0-hole-at-eof": (8 * MiB, [(4 * MiB, BLOCK)]),
    "many-extents": (16 * MiB, [(i * MiB, BLOCK) for i in range(0, 16, 2)]),
    "all-hole": (8 * MiB, []),
    "big-extent-at-0": (12 * MiB, [(0, 6 * MiB)]),  # several chunks in the first extent
    "small-file-data-at-0": (3 * BLOCK, [(0, BLOCK)]),
}


@pytest.fixture(params=["file", "s3"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    if request.param == "s3":
        url: str = request.getfixturevalue("s3_url")
    else:
        url = f"file://{tmp_path / 'repo'}"
    return Repository.create(open_store(url))


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_sparse_layout_round_trips(layout: str, repo: Repository, tmp_path: Path) -> None:
    size, extents = LAYOUTS[layout]
    src = tmp_path / "src"
    src.mkdir()
    want = _make(src / "sparse", size, extents)
    assert _allocated(src / "sparse") < size, "the test file is not sparse on this filesystem"

    snap = backup(repo, src, user="alice")

    assert snap.stats.complete and not snap.stats.changed, snap.stats
    report = check(repo, read_data=True)
    assert report.ok, report
    out = tmp_path / "out"
    restore(repo, snap, out)
    with open(out / "sparse", "rb") as f:
        assert f.read() == want, f"{layout}: restored content differs"
    assert os.path.getsize(out / "sparse") == size
    assert _allocated(out / "sparse") <= _allocated(src / "sparse") + 2 * BLOCK, "no longer sparse"


def _meddle(monkeypatch: pytest.MonkeyPatch, change: Callable[[int], Any]) -> list[int]:
    """Run ``change(fd)`` right after the extents of the first sparse file were found."""
    real = engine_archive._data_extents
    fired: list[int] = []

    def scan_then_change(fd: int, size: int) -> list[tuple[int, int]]:
        extents = real(fd, size)
        if not fired:
            fired.append(fd)
            change(fd)
        return extents

    monkeypatch.setattr(engine_archive, "_data_extents", scan_then_change)
    return fired


@pytest.mark.parametrize("how", ["grows", "shrinks", "rewritten"])
def test_a_sparse_file_changing_after_the_extent_scan_is_never_stored_wrong(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changes between finding its extents and reading them: the backup says
    it changed (so the archive keeps the home), and never stores other bytes as if they
    were the file's."""
    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    src = tmp_path / "src"
    src.mkdir()
    path = src / "sparse"
    _make(path, 8 * MiB, [(0, BLOCK), (8 * MiB - BLOCK, BLOCK)])

    def change(_fd: int) -> None:
        if how == "grows":
            with open(path, "ab") as f:
                f.write(b"appended after the scan")
        elif how == "shrinks":
            os.truncate(path, 4 * MiB)
        else:
            with open(path, "r+b") as f:
                f.write(b"NEW" * 100)

    fired = _meddle(monkeypatch, change)
    snap = backup(repo, src, user="alice")

    assert fired
    assert snap.stats.changed, "the change went unnoticed"
    assert "sparse" in " ".join(snap.stats.changed)


def test_restored_sparse_content_is_never_silently_zero(tmp_path: Path) -> None:
    """Data at offset 0, as the bug lost it: every byte of the first extent comes back."""
    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    src = tmp_path / "src"
    src.mkdir()
    want = _make(src / "f", 2 * MiB, [(0, BLOCK)])
    snap = backup(repo, src, user="alice")
    restore(repo, snap, tmp_path / "out")
    got = (tmp_path / "out" / "f").read_bytes()
    assert got[:BLOCK] == want[:BLOCK] and got[:BLOCK] != bytes(BLOCK)
