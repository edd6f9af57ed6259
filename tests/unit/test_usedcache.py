"""The local summary cache alone: what it refuses, and racing writers and readers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hometier.engine.usedcache import SummaryCache

SID = "ab" * 32
TAG = b"t" * 16


def _ids(n: int, seed: int = 0) -> list[bytes]:
    return sorted({bytes([seed]) + os.urandom(31) for _ in range(n)})


def _read(cache: SummaryCache, sid: str = SID) -> bytes | None:
    slices = cache.read(sid)
    return None if slices is None else b"".join(slices)


def test_round_trip_and_what_is_refused(tmp_path: Path) -> None:
    cache = SummaryCache(str(tmp_path), TAG)
    assert _read(cache) is None
    ids = _ids(500)
    cache.write(SID, ids)
    assert _read(cache) == b"".join(ids)
    assert _read(SummaryCache(str(tmp_path), b"u" * 16)) is None  # another repository
    path = tmp_path / f"{SID}.sum"
    os.rename(path, tmp_path / f"{'cd' * 32}.sum")
    assert _read(cache, "cd" * 32) is None  # another snapshot's entry
    os.rename(tmp_path / f"{'cd' * 32}.sum", path)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert _read(cache) is None  # truncated
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    assert _read(cache) is None  # one bit
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    assert _read(cache) is None  # a link is never followed
    assert cache.rejected == 3  # another snapshot, truncated, one bit (the link: not opened)
    path.unlink()
    cache.write(SID, [])
    assert _read(cache) == b""
    cache.write("cd" * 32, ids)
    assert cache.keep_only(["cd" * 32]) == 1
    assert _read(cache) is None and _read(cache, "cd" * 32) == b"".join(ids)


def test_an_entry_written_after_the_listing_survives_the_clean_up(tmp_path: Path) -> None:
    """An archive writes its snapshot's entry while a prune may be running: the prune's
    listing did not name that snapshot, and its clean-up must not take the entry."""
    cache = SummaryCache(str(tmp_path), TAG)
    old, new = "cd" * 32, "ef" * 32
    cache.write(old, _ids(3))
    long_ago = os.stat(tmp_path / f"{old}.sum").st_mtime - 3600
    os.utime(tmp_path / f"{old}.sum", (long_ago, long_ago))
    listed_at = long_ago + 1800
    cache.write(new, _ids(3, 1))  # written after the listing (now)
    assert cache.keep_only([SID], listed_at=listed_at) == 1  # only the forgotten one
    assert _read(cache, old) is None and _read(cache, new) is not None
    assert cache.keep_only([SID]) == 1  # without a listing time: gone too
    assert _read(cache, new) is None


def test_racing_writers_never_show_a_reader_half_an_entry(tmp_path: Path) -> None:
    """Two prunes (or a prune and a crashed one's leftovers) writing the same entry while
    a third reads it: a reader gets the whole entry or nothing, never a part."""
    ids = _ids(20_000)
    want = b"".join(ids)
    stop = threading.Event()
    writes = [0, 0]

    def writer(i: int) -> None:
        cache = SummaryCache(str(tmp_path), TAG)
        while not stop.is_set():
            cache.write(SID, ids)
            writes[i] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    reader = SummaryCache(str(tmp_path), TAG)
    seen = {"whole": 0, "none": 0}
    try:
        while not (tmp_path / f"{SID}.sum").exists():
            threading.Event().wait(0.001)
        for _ in range(300):
            got = _read(reader)
            assert got is None or got == want
            seen["whole" if got is not None else "none"] += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"reads {seen}, writes {writes}")
    assert seen["whole"] > 0 and sum(writes) > 2
    assert reader.rejected == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
