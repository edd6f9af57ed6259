"""The ``Store`` contract, run against every backend: memory, a local folder and S3.

Whatever sits above the store (packs, index, snapshots) relies on exactly these
behaviours, so each backend must show the same ones.
"""

from __future__ import annotations

import os

import pytest

from hometier.store import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from hometier.store.base import Retry

# A permanent error must raise at once; with few, short retries a misclassified one
# still fails fast (and shows up in stats.retries).
FAST = Retry(attempts=3, base=0.01, cap=0.05)


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url, retry=FAST)


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 1024 * 1024 + 7], ids=lambda n: f"{n}B")
def test_put_get_round_trip(store: Store, size: int) -> None:
    data = os.urandom(size)
    store.put("packs/ab/abcdef", data)
    assert store.get("packs/ab/abcdef") == data
    assert store.head("packs/ab/abcdef") == ObjectInfo("packs/ab/abcdef", size)
    assert store.exists("packs/ab/abcdef")


def test_put_accepts_bytes_like_data(store: Store) -> None:
    store.put("a", bytearray(b"bytearray"))
    store.put("b", memoryview(b"..memoryview..")[2:-2])
    assert store.get("a") == b"bytearray"
    assert store.get("b") == b"memoryview"


def test_put_overwrites_without_if_absent(store: Store) -> None:
    store.put("config", b"one")
    store.put("config", b"two")
    assert store.get("config") == b"two"


def test_get_missing_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.get("snapshots/missing")
    assert "snapshots/missing" in str(info.value)
    with pytest.raises(ObjectNotFound):
        store.head("snapshots/missing")
    with pytest.raises(ObjectNotFound):
        store.get_ranges("snapshots/missing", [(0, 1)])
    assert not store.exists("snapshots/missing")
    assert store.stats.retries == 0


def test_put_if_absent_on_new_key_writes(store: Store) -> None:
    store.put("locks/one", b"mine", if_absent=True)
    assert store.get("locks/one") == b"mine"


def test_put_if_absent_on_existing_key_raises_and_keeps_old_bytes(store: Store) -> None:
    store.put("config", b"old bytes")
    with pytest.raises(ObjectExists) as info:
        store.put("config", b"new bytes, longer", if_absent=True)
    assert "config" in str(info.value)
    assert store.get("config") == b"old bytes"
    assert store.stats.retries == 0


DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable mod 256


def test_get_ranges_returns_exact_slices(store: Store) -> None:
    store.put("packs/p", DATA)
    ranges = [(0, 10), (100, 300), (5000, 10240), (10239, 10240), (50, 60), (0, 10)]
    parts = store.get_ranges("packs/p", ranges)
    assert parts == [DATA[a:b] for a, b in ranges]
    assert all(isinstance(p, bytes) for p in parts)
    assert store.get_ranges("packs/p", []) == []
    # Without the copy: the backend's buffers, the same bytes through memoryview.
    views = store.get_ranges("packs/p", ranges, copy=False)
    assert [bytes(memoryview(v)) for v in views] == [DATA[a:b] for a, b in ranges]
    assert [len(v) for v in views] == [b - a for a, b in ranges]


@pytest.mark.parametrize(
    "bad",
    [(10000, 10300), (10240, 10250), (20000, 20010)],
    ids=["overlaps-end", "starts-at-end", "past-end"],
)
def test_get_ranges_past_the_end_raises_and_never_pads(store: Store, bad: tuple[int, int]) -> None:
    store.put("packs/p", DATA)
    with pytest.raises(StoreError) as info:
        store.get_ranges("packs/p", [(0, 10), bad])
    # A short object is a permanent fault of the repository, not an outage to retry.
    assert not isinstance(info.value, ObjectNotFound | StoreUnavailable)
    assert store.stats.retries == 0
    with pytest.raises(StoreError):  # the same without the copy
        store.get_ranges("packs/p", [(0, 10), bad], copy=False)


def test_list_by_prefix_returns_keys_and_sizes(store: Store) -> None:
    objects = {
        "packs/00/a": b"aaa",
        "packs/01/b": b"bbbbb",
        "packs/01/c": b"",
        "packsx/d": b"dd",  # shares a string prefix but is not in the folder
        "index/e": b"e",
        "config": b"cfg",
    }
    for key, data in objects.items():
        store.put(key, data)

    def listed(prefix: str) -> dict[str, int]:
        infos = list(store.list(prefix))
        assert all(isinstance(i, ObjectInfo) for i in infos)
        result = {i.key: i.size for i in infos}
        assert len(result) == len(infos), "a key was listed twice"
        return result

    packs = {"packs/00/a": 3, "packs/01/b": 5, "packs/01/c": 0}
    assert listed("packs/") == packs
    assert listed("packs") == packs
    assert listed("packs/01/") == {"packs/01/b": 5, "packs/01/c": 0}
    assert listed("") == {k: len(v) for k, v in objects.items()}
    assert listed("nothing/") == {}


def test_list_many_keys(store: Store) -> None:
    # More than one page of a listing on S3 would be 1000 keys; 120 keeps it quick while
    # still checking that nothing is lost or repeated.
    keys = {f"index/{i:04d}" for i in range(120)}
    for key in keys:
        store.put(key, b"x")
    assert {i.key for i in store.list("index/")} == keys


def test_delete_is_idempotent(store: Store) -> None:
    store.put("locks/l", b"x")
    store.delete("locks/l")
    assert not store.exists("locks/l")
    with pytest.raises(ObjectNotFound):
        store.get("locks/l")
    store.delete("locks/l")  # already gone
    store.delete("locks/never-existed")
    assert list(store.list("locks/")) == []
    assert store.stats.retries == 0


def test_stats_count_requests_and_bytes_per_op(store: Store) -> None:
    store.put("a", b"0123456789")
    store.put("b", b"xyz")
    assert store.get("a") == b"0123456789"
    assert store.get_ranges("a", [(0, 2), (5, 9)]) == [b"01", b"5678"]
    assert store.head("b").size == 3
    assert len(list(store.list(""))) == 2
    store.delete("b")

    snap = store.stats.snapshot()
    assert snap["requests"] == {
        "put": 2,
        "get": 1,
        "get_range": 1,
        "head": 1,
        "list": 1,
        "delete": 1,
    }
    assert snap["bytes"]["put"] == 13
    assert snap["bytes"]["get"] == 10
    assert snap["bytes"]["get_range"] == 6
    assert snap["retries"] == 0
