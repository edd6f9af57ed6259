"""A blob whose place fails verification twice is read from another copy the index knows.

A snapshot's locator can name a wrong place (an incremental backup copies its parent's
places), and a pack can be damaged where a repack has left the same blob in another
pack too. Either way the blob's bytes are still in the bucket: a restore reads them
there (verified against the blob's keyed hash like any other read) and says so in the
log, instead of failing. With no good copy anywhere it still fails, naming the blob.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hometier.engine import backup, restore
from hometier.engine.restore import RestoreError
from hometier.errors import IntegrityError
from hometier.repo import Repository
from hometier.repo.ids import BlobId, BlobType, pack_key
from hometier.repo.index import VALUE
from hometier.repo.snapshot import Snapshot
from hometier.store import open_store

BIG = os.urandom(300_000)


def _home(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(BIG)
    for i in range(5):
        (src / f"note-{i}.txt").write_bytes(b"note %d\n" % i * 50)
    return src


def _big_blob(repo: Repository) -> BlobId:
    return repo.blob_id(BIG)


def _archived(tmp_path: Path) -> tuple[str, Repository, Snapshot]:
    """A repository in `tmp_path` holding one backup of `_home`: its URL, writer, snapshot."""
    url = f"file://{tmp_path}/repo"
    repo, _ = Repository.open_or_create(open_store(url))
    return url, repo, backup(repo, _home(tmp_path), user="ann")


def _damage(store_root: Path, pack: bytes, offset: int) -> None:
    path = store_root / pack_key(pack)  # type: ignore[arg-type]
    with open(path, "r+b") as f:
        f.seek(offset + 10)
        byte = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_wrong_place_in_the_locator_is_read_from_the_indexed_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, repo, snap = _archived(tmp_path)
    reader = Repository.open(open_store(url))
    view = reader.for_snapshot(snap, strict=True)
    locator = view.where._locator()  # noqa: SLF001 - the place the test makes wrong
    assert locator is not None
    bid = _big_blob(reader)
    no, off, stored, raw_len, typ, comp = VALUE.unpack(locator.index._map[bid])  # noqa: SLF001
    assert typ == BlobType.DATA
    locator.index._map[bid] = VALUE.pack(no, off + 7, stored, raw_len, typ, comp)  # noqa: SLF001
    with caplog.at_level(logging.WARNING):
        restore(view, snap, tmp_path / "back")
    assert (tmp_path / "back" / "big.bin").read_bytes() == BIG
    assert "read from its copy in pack" in caplog.text, caplog.text


def test_a_damaged_pack_is_read_around_when_a_repack_left_another_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, repo, snap = _archived(tmp_path)
    bid = _big_blob(repo)
    (first,) = repo.blobs.locations(bid)
    # What a repack does: the same blob stored again, in a new pack.
    w = repo.writer()
    w.add(BlobType.DATA, BIG, force=True)
    w.flush()
    w.close()
    reader = Repository.open(open_store(url))
    reader.load_index()
    assert len(reader.blobs.locations(bid)) == 2
    _damage(tmp_path / "repo", first.pack, first.offset)
    with caplog.at_level(logging.WARNING):
        restore(reader.for_snapshot(snap), snap, tmp_path / "back")
    assert (tmp_path / "back" / "big.bin").read_bytes() == BIG
    assert "read from its copy in pack" in caplog.text, caplog.text


def test_with_no_good_copy_the_restore_fails_and_names_the_blob(tmp_path: Path) -> None:
    url, repo, snap = _archived(tmp_path)
    bid = _big_blob(repo)
    (only,) = repo.blobs.locations(bid)
    _damage(tmp_path / "repo", only.pack, only.offset)
    reader = Repository.open(open_store(url))
    with pytest.raises((RestoreError, IntegrityError), match=bid.hex()[:16]):
        restore(reader.for_snapshot(snap), snap, tmp_path / "back")
    assert not (tmp_path / "back").exists()
