"""Snapshot documents cached on local disk (``list_snapshots(cached=True)``).

Retention lists every snapshot of the repository at every run; the documents never
change, so a second cached listing must not GET them again. The cache may never make a
snapshot appear that the bucket no longer lists, nor serve a document that does not
hash to its name, and what checks the bucket (``check``, the uncached listing) still
reads the bucket's own bytes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from hometier.engine import backup, check
from hometier.engine.check import CheckFailed
from hometier.lifecycle import cycle
from hometier.repo import Repository
from hometier.repo.ids import plain_hash
from hometier.store import open_store
from treeutil import record_calls


def _counting(repo: Repository) -> list[str]:
    """Keys of every GET the repository's store makes from now on."""
    return record_calls(repo.store, "get")


def _doc_reads(got: list[str]) -> list[str]:
    return [k for k in got if k.startswith("snapshots/")]


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> tuple[str, Path, list[str]]:
    """A repository with three snapshots of two users; its URL, a cache folder, ids."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "a.txt").write_text("a\n")
    repo, _ = Repository.open_or_create(open_store(store_url))
    ids = [backup(repo, str(home), user=u).id for u in ("alice", "alice", "bob")]
    return store_url, tmp_path / "cache", ids


def test_a_second_cached_listing_reads_no_snapshot_document(
    world: tuple[str, Path, list[str]],
) -> None:
    url, cache, _ids = world
    repo = Repository.open(open_store(url), cache_dir=str(cache))
    first = repo.list_snapshots(cached=True)
    again = Repository.open(open_store(url), cache_dir=str(cache))  # a restarted process
    got = _counting(again)
    second = again.list_snapshots(cached=True)
    assert [s.id for s in second] == [s.id for s in first] and len(first) == 3
    assert _doc_reads(got) == []
    assert [s.id for s in again.list_snapshots("alice", cached=True)] == [
        s.id for s in first if s.user == "alice"
    ]
    assert _doc_reads(got) == []
    # Without ``cached`` every document comes from the bucket, as before.
    assert len(again.list_snapshots()) == 3
    assert len(_doc_reads(got)) == 3


def test_the_archiver_finds_a_homes_parent_through_the_cache(
    world: tuple[str, Path, list[str]],
) -> None:
    """Each archive looks for the user's newest complete snapshot: with the documents
    cached it reads none of them again (a user archived every week has dozens)."""
    url, cache, ids = world
    repo = Repository.open(open_store(url), cache_dir=str(cache))
    lc = SimpleNamespace(repo=repo)
    first = cycle._latest_snapshot(lc, "alice")  # noqa: SLF001
    assert first is not None and first.id == ids[1]  # the newer of alice's two
    got = _counting(repo)
    again = cycle._latest_snapshot(lc, "alice")  # noqa: SLF001
    assert again is not None and again.id == first.id
    assert _doc_reads(got) == []
    assert cycle._latest_snapshot(lc, "carol") is None  # noqa: SLF001


def test_a_damaged_copy_is_fetched_again(world: tuple[str, Path, list[str]]) -> None:
    url, cache, ids = world
    Repository.open(open_store(url), cache_dir=str(cache)).list_snapshots(cached=True)
    copies = list(cache.rglob(f"snapshots/{ids[2]}"))
    assert len(copies) == 1
    damaged = bytearray(copies[0].read_bytes())
    damaged[-5] ^= 0x01
    copies[0].write_bytes(bytes(damaged))
    again = Repository.open(open_store(url), cache_dir=str(cache))
    got = _counting(again)
    snaps = {s.id: s for s in again.list_snapshots(cached=True)}
    assert snaps[ids[2]].user == "bob"
    reads = _doc_reads(got)
    assert len(reads) == 1 and reads[0].endswith(ids[2])  # only the damaged one
    assert copies[0].read_bytes() != bytes(damaged)  # the good document replaced it


def test_a_snapshot_forgotten_elsewhere_is_not_served_from_the_cache(
    world: tuple[str, Path, list[str]],
) -> None:
    url, cache, ids = world
    Repository.open(open_store(url), cache_dir=str(cache)).list_snapshots(cached=True)
    # Another process, with a cache of its own, forgets alice's first snapshot.
    other = Repository.open(open_store(url))
    other.delete_snapshot(other.find_snapshot(ids[0], "alice"))
    again = Repository.open(open_store(url), cache_dir=str(cache))
    assert ids[0] not in {s.id for s in again.list_snapshots(cached=True)}
    assert not list(cache.rglob(f"snapshots/{ids[0]}"))  # swept by the full listing
    assert len(list(cache.rglob("snapshots/*"))) == 2


def test_check_still_reads_the_buckets_documents(world: tuple[str, Path, list[str]]) -> None:
    """A document damaged in the bucket after it was cached is still found by ``check``."""
    url, cache, ids = world
    repo = Repository.open(open_store(url), cache_dir=str(cache))
    repo.list_snapshots(cached=True)
    key = next(k for k in repo.snapshot_keys() if k.endswith(ids[1]))
    store = open_store(url)
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0x01
    store.delete(key)
    store.put(key, bytes(data))
    with pytest.raises(CheckFailed, match=ids[1][:12]):
        check(Repository.open(open_store(url), cache_dir=str(cache)))


def test_a_document_that_does_not_parse_is_reported_with_the_cache_too(
    world: tuple[str, Path, list[str]],
) -> None:
    """A hostile document that hashes to its name but is not a snapshot: a cached listing
    that collects errors reports it and returns the others, as an uncached one does."""
    url, cache, ids = world
    repo = Repository.open(open_store(url), cache_dir=str(cache))
    repo.list_snapshots(cached=True)  # the good ones are cached now
    data = b'{"version": 99, "user": "mallory"}'
    sid = plain_hash(data).hex()
    repo.store.put(f"snapshots/mallory/{sid}", data)
    for cached in (True, True, False):  # twice: nothing bad is cached by the first
        errors: list[str] = []
        got = repo.list_snapshots(cached=cached, errors=errors)
        assert sorted(s.id for s in got) == sorted(ids)
        assert len(errors) == 1 and sid in errors[0] and "version" in errors[0]
    assert not list(cache.rglob(f"snapshots/{sid}*"))
