"""The shared writer's lane: new blobs compressed beside their callers, in batches.

What could go wrong with compression moved off the caller's thread: a blob queued and
never stored (a backup that returns before its blobs are durable), a failure in the lane
that nobody sees (or that hangs the caller), memory growing without bound behind a slow
lane, and two sessions racing to store the same content twice.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.repo import BlobType, Repository
from hometier.repo import writer as writer_mod
from hometier.repo.pack import parse_trailer
from hometier.store import open_store


def _repo() -> Repository:
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))
    return repo


def _blobs(n: int, size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # Half random, half text: both the raw and the compressed path are taken.
    return [
        rng.randbytes(size) if i % 2 else (b"line %d of blob %d\n" % (i, seed)) * (size // 20)
        for i in range(n)
    ]


def _entries(repo: Repository) -> dict[bytes, int]:
    """How many times each blob is stored, over every pack in the bucket."""
    seen: dict[bytes, int] = {}
    for obj in repo.store.list("packs/"):
        data = repo.store.get(obj.key)
        for e in parse_trailer(data, len(data)):
            seen[e.id] = seen.get(e.id, 0) + 1
    return seen


def test_flush_stores_what_still_waits_in_the_batch() -> None:
    """Fewer bytes than one batch never reach the lane by themselves: flush hands them
    over and returns only once they are in an indexed pack."""
    repo = _repo()
    blobs = _blobs(12, 3000, seed=1)
    assert sum(map(len, blobs)) < writer_mod.LANE_BATCH
    with repo.writer(lanes=1) as w:
        ids = [w.add(BlobType.DATA, b)[0] for b in blobs]
        assert all(w.shared.pending(bid) for bid in ids)
        flusher = threading.Thread(target=w.flush, daemon=True)
        flusher.start()
        flusher.join(30)
        assert not flusher.is_alive(), "flush is still waiting for blobs nobody stores"
        assert not any(w.shared.pending(bid) for bid in ids)
        assert all(bid in w.locations for bid in ids)
    fresh = Repository.open(repo.store)
    fresh.load_index()
    for bid, data in zip(ids, blobs, strict=True):
        assert fresh.read_blob(bid) == data


def test_a_failure_in_the_lane_fails_the_backup_and_saves_no_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob the lane cannot encode fails the backup that queued it (not silently, not
    by hanging it); no snapshot is saved, and the next backup stores everything."""
    home = tmp_path / "home"
    (home / "many").mkdir(parents=True)
    for i, data in enumerate(_blobs(300, 9000, seed=2)):
        (home / "many" / f"f{i:03}").write_bytes(data)
    poisoned = (home / "many" / "f150").read_bytes()
    real = writer_mod.codec.encode
    calls: list[str] = []

    def encode(data: Any) -> Any:
        calls.append(threading.current_thread().name)
        if bytes(data) == poisoned:
            raise MemoryError("cannot compress this one")
        return real(data)

    monkeypatch.setattr(writer_mod.codec, "encode", encode)
    repo = _repo()
    started = time.monotonic()
    with pytest.raises(MemoryError, match="cannot compress this one"):
        backup(repo, home, user="alice")
    print(f"failed after {time.monotonic() - started:.2f}s, {len(calls)} blobs encoded")
    assert all(name.startswith("compress") for name in calls), set(calls)
    assert repo.list_snapshots() == []
    monkeypatch.undo()
    snap = backup(repo, home, user="alice")
    restore(repo, snap, tmp_path / "out")
    for i in range(300):
        name = f"f{i:03}"
        assert (tmp_path / "out" / "many" / name).read_bytes() == (
            home / "many" / name
        ).read_bytes()


def test_adders_wait_while_the_lane_is_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow lane holds its callers back: the raw bytes waiting for it stay within
    ``LANE_QUEUED`` (plus the blob being queued), whatever the callers add."""
    monkeypatch.setattr(writer_mod, "LANE_QUEUED", 2 * 1024 * 1024)
    real = writer_mod.codec.encode

    def slow(data: Any) -> Any:
        time.sleep(0.002)
        return real(data)

    monkeypatch.setattr(writer_mod.codec, "encode", slow)
    repo = _repo()
    blobs = _blobs(200, 64 * 1024, seed=3)
    highest = 0
    with repo.writer(lanes=1) as w:

        def watch() -> None:
            nonlocal highest
            while not done.is_set():
                highest = max(highest, w.shared._queued)
                time.sleep(0.0005)

        done = threading.Event()
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for b in blobs:
                w.add(BlobType.DATA, b)
            w.flush()
        finally:
            done.set()
            watcher.join()
    print(f"most raw bytes waiting for the lane: {highest} (limit {writer_mod.LANE_QUEUED})")
    assert 0 < highest <= writer_mod.LANE_QUEUED + 64 * 1024
    assert sorted(_entries(repo).values()) == [1] * len(blobs)


def test_sessions_racing_over_the_same_content_store_it_once() -> None:
    """Four sessions add the same blobs in different orders at once, through two lanes:
    every blob is in exactly one pack, and every session can locate all of them."""
    repo = _repo()
    blobs = _blobs(400, 20_000, seed=4)
    barrier = threading.Barrier(4)
    located: list[int] = []
    errors: list[BaseException] = []

    def session(seed: int) -> None:
        try:
            order = blobs[:]
            random.Random(seed).shuffle(order)
            with repo.writer(lanes=2) as w:
                barrier.wait()
                ids = [w.add(BlobType.DATA, b)[0] for b in order]
                w.flush()
                located.append(sum(1 for bid in ids if bid in w.locations))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    counts = _entries(repo)
    print(f"{len(counts)} blobs stored, {sum(counts.values())} entries, located {located}")
    assert sorted(counts.values()) == [1] * len(blobs)
    assert located == [len(blobs)] * 4


def test_a_view_is_compressed_by_its_caller_not_queued() -> None:
    """A chunk handed over as a view lives in a buffer its caller reuses: it must be
    encoded before ``add`` returns, never queued (the bytes would change under it)."""
    repo = _repo()
    buf = bytearray(os.urandom(300_000))
    with repo.writer(lanes=1) as w:
        bid, new = w.add(BlobType.DATA, memoryview(buf)[:200_000])
        assert new
        expected = bytes(buf[:200_000])
        buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
        w.flush()
    fresh = Repository.open(repo.store)
    fresh.load_index()
    assert fresh.read_blob(bid) == expected
