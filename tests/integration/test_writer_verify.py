"""Writer processes verify what they write: a blob reaches them as it is stored, and they
decode it and check it against its keyed hash before creating its file.

What that must keep from a read in the restoring process: a blob damaged on the way is
read again (and restored exactly); a blob damaged in the bucket, with no other copy,
fails the restore and changes nothing; a wrong place in a snapshot's locator is read
from the copy the index knows. The writers are forced (``processes=2``) so that every
single-blob file goes through them.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.engine.restore import RestoreError
from hometier.repo import Repository
from hometier.repo.ids import BlobId, BlobType, pack_key
from hometier.repo.index import VALUE
from hometier.repo.snapshot import Snapshot
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree

restore_mod = importlib.import_module("hometier.engine.restore")
FILES = 120


def _home(root: Path) -> Path:
    """Small files of one blob each (compressible and not), and one of several blobs."""
    for i in range(FILES):
        d = root / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        body = (b"line %d\n" % i) * 300 if i % 2 else os.urandom(2000 + i)
        (d / f"f{i}.txt").write_bytes(body)
    (root / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    return root


def _archived(tmp_path: Path) -> tuple[str, Snapshot]:
    url = f"file://{tmp_path}/repo"
    repo, _ = Repository.open_or_create(open_store(url))
    return url, backup(repo, _home(tmp_path / "home"), user="ann")


def _small_blob(repo: Repository, name: str) -> BlobId:
    return repo.blob_id(Path(name).read_bytes())


def _writers_used(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    real = restore_mod.Writers

    def make(*args: Any, **kw: Any) -> Any:
        w = real(*args, **kw)
        made.append(w)
        return w

    monkeypatch.setattr(restore_mod, "Writers", make)
    return made


def test_blobs_damaged_on_the_way_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The restore's batched fetch brings every blob of a small file with a flipped byte
    the first time; the writers reject those blobs and the restore reads them again
    (unharmed the second time): the tree comes back exactly."""
    url, snap = _archived(tmp_path)
    expected = snapshot_of_tree(tmp_path / "home", include_root=False)
    reader = Repository.open(open_store(url))
    view = reader.for_snapshot(snap)
    locator = view.where._locator()  # noqa: SLF001 - where each blob sits, to damage it
    assert locator is not None
    # The blobs of the small files (one each), not the last chunk of big.bin, which can
    # be as small but is written by the restoring process, not by a writer.
    small = {}
    for path in (tmp_path / "home").glob("d*/f*.txt"):
        bid = reader.blob_id(path.read_bytes())
        loc = locator.get(bid)
        assert loc is not None and loc.type == BlobType.DATA
        small[bid] = loc
    assert len(small) == FILES
    real = view.store.get_ranges
    damaged = [0]
    seen: set[bytes] = set()

    def on_the_way(key: str, ranges: Any, *, copy: bool = True) -> list[Any]:
        got = real(key, ranges, copy=copy)
        if copy:  # a single read (``read_blob``): unharmed
            return got
        out = []
        for (start, end), data in zip(ranges, got, strict=True):
            buf = bytearray(memoryview(data))
            for bid, loc in small.items():
                if pack_key(loc.pack) == key and start <= loc.offset < end and bid not in seen:
                    seen.add(bid)
                    buf[loc.offset - start + loc.stored_len // 2] ^= 0x40
                    damaged[0] += 1
            out.append(bytes(buf))
        return out

    monkeypatch.setattr(view.store, "get_ranges", on_the_way)
    made = _writers_used(monkeypatch)
    with caplog.at_level(logging.WARNING):
        restore(view, snap, tmp_path / "back", processes=2)
    print(f"blobs damaged on the way: {damaged[0]} of {len(small)} small blobs")
    assert made and sum(len(w.failed) for w in made) == damaged[0] >= FILES
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "back", include_root=False))
    assert f"{damaged[0]} blob(s) failed verification in a writer process" in caplog.text


def test_a_blob_damaged_in_the_bucket_fails_the_restore_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, snap = _archived(tmp_path)
    reader = Repository.open(open_store(url))
    reader.load_index()
    bid = _small_blob(reader, str(tmp_path / "home" / "d1" / "f5.txt"))
    (only,) = reader.blobs.locations(bid)
    path = tmp_path / "repo" / pack_key(only.pack)
    with open(path, "r+b") as f:
        f.seek(only.offset + only.stored_len // 2)
        byte = f.read(1)
        f.seek(only.offset + only.stored_len // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    made = _writers_used(monkeypatch)
    target = tmp_path / "back"
    with pytest.raises(RestoreError, match=bid.hex()[:16]):
        restore(Repository.open(open_store(url)), snap, target, processes=2)
    assert made, "the writers ran"
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hometier")] == []


def test_a_wrong_place_in_the_locator_is_read_from_the_indexed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, snap = _archived(tmp_path)
    expected = snapshot_of_tree(tmp_path / "home", include_root=False)
    reader = Repository.open(open_store(url))
    view = reader.for_snapshot(snap, strict=True)
    locator = view.where._locator()  # noqa: SLF001 - the place the test makes wrong
    assert locator is not None
    bid = _small_blob(reader, str(tmp_path / "home" / "d2" / "f6.txt"))
    no, off, stored, raw_len, typ, comp = VALUE.unpack(locator.index._map[bid])  # noqa: SLF001
    locator.index._map[bid] = VALUE.pack(no, off + 3, stored, raw_len, typ, comp)  # noqa: SLF001
    made = _writers_used(monkeypatch)
    with caplog.at_level(logging.WARNING):
        restore(view, snap, tmp_path / "back", processes=2)
    assert [len(w.failed) for w in made] == [1]
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "back", include_root=False))
    assert "failed verification in a writer process" in caplog.text
    assert "read from its copy in pack" in caplog.text, caplog.text
