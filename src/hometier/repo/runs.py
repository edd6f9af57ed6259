"""Sorted run files: the on-disk form of the blob index cache (``blobindex``).

A run is an immutable local file of fixed-size records sorted by their bytes::

    magic "HTRUN\\x00\\x00\\x01" | count u64 | bits u32 | fan (2^bits + 1) x u32
        | records (REC each, sorted)

A record is ``REC`` (50 bytes): blob id[32], pack number u32, then the rest of the
blob's pack entry (type u8, compression u8, offset u32, stored_len u32, raw_len u32).
``fan[k]`` is the number of records whose id's first ``bits`` bits are below ``k``, so
a lookup reads one small slice of the file with ``pread`` (about 64 records) and
bisects it in memory. Runs are read with ``pread``, never memory-mapped: pages a lookup
touches stay in the page cache and do not count against the process's memory.

Runs are a local cache, not part of the repository format: they can be deleted at any
time and are rebuilt from the index objects in the bucket.
"""

from __future__ import annotations

import heapq
import os
import struct
import tempfile
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from hometier.errors import Error

MAGIC = b"HTRUN\x00\x00\x01"
HEAD = struct.Struct("<8sQI")
REC = struct.Struct("<32sIBBIII")
SIZE = REC.size
ID = 32
SPILL = 200_000
"""Records a ``RunBuilder`` keeps in memory before it partitions them on disk."""


class CacheDamaged(Error):
    """The local index cache at {} is damaged ({}); delete that folder to rebuild it."""

    exit_code = 5


def _bits_for(count: int) -> int:
    bits = 0
    while bits < 20 and (count >> bits) > 64:
        bits += 1
    return bits


def _chunks(records: Iterable[bytes], size: int = 65536) -> Iterator[list[bytes]]:
    buf: list[bytes] = []
    for rec in records:
        buf.append(rec)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def write_run(path: str, records: Iterable[bytes], count: int) -> None:
    """Write sorted ``records`` (exactly ``count``) to ``path`` atomically (fsynced)."""
    write_chunks(path, _chunks(records), count)


def write_chunks(path: str, chunks: Iterable[list[bytes]], count: int) -> None:
    """``write_run`` from sorted lists of records (each following the previous one)."""
    bits = _bits_for(count)
    fan = array("I", bytes(4 * ((1 << bits) + 1)))
    shift = 32 - bits
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(HEAD.pack(MAGIC, count, bits))
        f.write(fan.tobytes())  # rewritten below, once the records are counted
        n = 0
        for chunk in chunks:
            if not chunk:
                continue
            if bits:
                # Count each prefix's records by bisecting the sorted chunk: a few
                # bisections per prefix present rather than work per record.
                pos = 0
                first = int.from_bytes(chunk[0][:4], "big") >> shift
                last = int.from_bytes(chunk[-1][:4], "big") >> shift
                for k in range(first, last + 1):
                    if k + 1 >= 1 << bits:
                        end = len(chunk)
                    else:
                        end = bisect_left(chunk, ((k + 1) << shift).to_bytes(4, "big"), pos)
                    fan[k + 1] += end - pos
                    pos = end
            f.write(b"".join(chunk))
            n += len(chunk)
        if n != count:
            raise ValueError(f"write_run: {n} records, {count} announced")
        fan[0] = 0
        total = 0
        for k in range(1, len(fan)):
            total += fan[k]
            fan[k] = total
        if not bits:
            fan[1] = count
        f.seek(HEAD.size)
        f.write(fan.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_CLOSING = threading.Lock()


class Run:
    """An open run; thread-safe (``pread`` only). Closing one that a lookup still reads
    fails that lookup (``EBADF``), never redirects it: ``BlobIndex`` closes a run only
    when no lookup is in flight."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.pread(self.fd, HEAD.size, 0)
            if len(head) != HEAD.size:
                raise CacheDamaged(path, "short run header")
            magic, count, bits = HEAD.unpack(head)
            self.count: int = count
            self.bits: int = bits
            if magic != MAGIC or self.bits > 24:
                raise CacheDamaged(path, "bad run header")
            n = (1 << self.bits) + 1
            raw = os.pread(self.fd, 4 * n, HEAD.size)
            self.fan = array("I")
            self.fan.frombytes(raw)
            if len(self.fan) != n or self.fan[-1] != self.count:
                raise CacheDamaged(path, "bad fan-out table")
            self.base = HEAD.size + 4 * n
            if os.fstat(self.fd).st_size != self.base + self.count * SIZE:
                raise CacheDamaged(path, "run has the wrong length")
        except BaseException:
            os.close(self.fd)
            raise
        self._shift = 32 - self.bits

    def close(self) -> None:
        # The number is taken and cleared before the descriptor is closed, under a lock:
        # two threads closing one run must not both close the number, the second time
        # a descriptor another thread has just opened (a file being archived).
        with _CLOSING:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __len__(self) -> int:
        return self.count

    def find(self, bid: bytes) -> list[bytes]:
        """Every record whose id is ``bid`` (a blob may sit in several packs)."""
        k = int.from_bytes(bid[:4], "big") >> self._shift if self.bits else 0
        lo, hi = self.fan[k], self.fan[k + 1]
        if lo == hi:
            return []
        data = os.pread(self.fd, (hi - lo) * SIZE, self.base + lo * SIZE)
        ids = _Ids(data)
        i = bisect_left(ids, bid)
        out = []
        while i < len(ids) and ids[i] == bid:
            out.append(data[i * SIZE : (i + 1) * SIZE])
            i += 1
        return out

    def __iter__(self) -> Iterator[bytes]:
        """Every record in order, read in large slices."""
        step = 1 << 16
        for start in range(0, self.count, step):
            n = min(step, self.count - start)
            data = os.pread(self.fd, n * SIZE, self.base + start * SIZE)
            for i in range(0, len(data), SIZE):
                yield data[i : i + SIZE]


class _Ids:
    """The ids of a slice of records, as a sequence ``bisect`` can search."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data) // SIZE

    def __getitem__(self, i: int) -> bytes:
        return self.data[i * SIZE : i * SIZE + ID]


def merge(path: str, runs: list[Run], drop: set[int] | frozenset[int] = frozenset()) -> int:
    """Merge ``runs`` into a new run at ``path``, leaving out records of packs in
    ``drop`` and exact duplicates; returns the record count."""

    def keep() -> Iterator[bytes]:
        last = b""
        for rec in heapq.merge(*runs):
            if rec == last:
                continue
            last = rec
            if drop and REC.unpack_from(rec)[1] in drop:
                continue
            yield rec

    # Two passes (count, then write) would read everything twice: spool instead.
    with RunBuilder(os.path.dirname(path)) as b:
        for rec in keep():
            b.add(rec)
        return b.finish(path)


class RunBuilder:
    """Collects unsorted records and writes them as one sorted run, in bounded memory:
    beyond ``SPILL`` records they are partitioned by their first byte into 256 files,
    each then sorted on its own."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.mem: list[bytes] = []
        self.parts: list[object] | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.count = 0

    def __enter__(self) -> RunBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rec: bytes) -> None:
        self.mem.append(rec)
        self.count += 1
        if len(self.mem) >= SPILL:
            self._spill()

    def extend(self, recs: list[bytes]) -> None:
        self.mem.extend(recs)
        self.count += len(recs)
        if len(self.mem) >= SPILL:
            self._spill()

    def _spill(self) -> None:
        if self.parts is None:
            self.tmp = tempfile.TemporaryDirectory(dir=self.folder, prefix="spill-")
            self.parts = [
                open(os.path.join(self.tmp.name, f"{i:02x}"), "wb", buffering=1 << 16)  # noqa: SIM115
                for i in range(256)
            ]
        groups: list[list[bytes]] = [[] for _ in range(256)]
        for rec in self.mem:
            groups[rec[0]].append(rec)
        for i, g in enumerate(groups):
            if g:
                self.parts[i].write(b"".join(g))  # type: ignore[attr-defined]
        self.mem = []

    def _sorted(self) -> Iterator[list[bytes]]:
        if self.parts is None:
            self.mem.sort()
            yield self.mem
            return
        self._spill()
        assert self.tmp is not None
        for i, f in enumerate(self.parts):
            f.close()  # type: ignore[attr-defined]
            with open(os.path.join(self.tmp.name, f"{i:02x}"), "rb") as r:
                data = r.read()
            recs = [data[j : j + SIZE] for j in range(0, len(data), SIZE)]
            del data
            recs.sort()
            yield recs

    def finish(self, path: str) -> int:
        """Write the sorted run; returns its record count."""
        write_chunks(path, self._sorted(), self.count)
        return int(self.count)

    def close(self) -> None:
        if self.parts is not None:
            for f in self.parts:
                f.close()  # type: ignore[attr-defined]
            self.parts = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None
        self.mem = []
