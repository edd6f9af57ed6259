"""``BlobWriter``: deduplicate, compress and pack blobs, upload packs in the background."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hometier import faults
from hometier.repo import codec
from hometier.repo.ids import BlobId, BlobType, PackId, pack_key
from hometier.repo.index import PackRecord
from hometier.repo.pack import Entry, PackBuilder

if TYPE_CHECKING:
    from hometier.repo.repository import Repository

INDEX_EVERY = 16
"""Write an index object every this many packs, so a crashed backup's packs are reused."""


@dataclass
class WriterStats:
    blobs_new: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    packs: int = 0


class BlobWriter:
    """Adds blobs to a repository; thread-safe.

    ``add`` returns at once for a blob the repository (or this writer) already has.
    New blobs are compressed in the calling thread and appended to the open pack (one
    for data, one for trees); a full pack is sealed and uploaded on a background thread,
    ``uploads`` at a time. At most ``uploads + 1`` sealed packs wait or travel: ``add``
    blocks, holding no pack, until one is durable. Memory is therefore bounded by about
    ``(uploads + 3) * pack_size`` whatever the number of calling threads. Nothing is
    visible to readers until ``flush`` returns: packs first, then the index object
    that names them.
    """

    def __init__(self, repo: Repository, *, pack_size: int, uploads: int) -> None:
        self.repo = repo
        self.pack_size = pack_size
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        # Trees go in packs of their own: reading a snapshot's trees (restore, the parent
        # of an incremental backup) must not drag file data along with them.
        self._builders = {BlobType.DATA: PackBuilder(), BlobType.TREE: PackBuilder()}
        # Sealed packs not yet uploaded, at most ``uploads + 1``: a thread that would start
        # filling another pack waits, without holding any data (memory stays bounded).
        self._max_sealed = uploads + 1
        self._sealed = 0
        self._room = threading.Condition(self._lock)
        self._pool = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix="upload")
        self._futures: list[Future[PackRecord]] = []
        self._unindexed: list[PackRecord] = []
        self._error: BaseException | None = None
        self._closed = False

    def has(self, bid: BlobId) -> bool:
        return self.repo.known(bid) or bid in self._pending

    def add(self, typ: BlobType, data: bytes, bid: BlobId | None = None) -> tuple[BlobId, bool]:
        """Store ``data`` unless it is already known; returns (id, whether it was new)."""
        if self._error is not None:
            raise self._error
        if bid is None:
            bid = self.repo.blob_id(data)
        with self._lock:
            if bid in self._pending or self.repo.known(bid):
                return bid, False
            self._pending.add(bid)
        comp, stored = codec.encode(data)
        sealed: PackBuilder | None = None
        with self._room:
            while self._sealed >= self._max_sealed and self._error is None:
                self._room.wait()
            builder = self._builders[typ]
            builder.add(bid, typ, comp, stored, len(data))
            self.stats.blobs_new += 1
            self.stats.bytes_new_raw += len(data)
            self.stats.bytes_new_stored += len(stored)
            if builder.size >= self.pack_size:
                sealed, self._builders[typ] = builder, PackBuilder()
                self._sealed += 1
        if sealed is not None:
            self._upload(sealed)
        return bid, True

    def _upload(self, builder: PackBuilder) -> None:
        """Seal and queue one pack; the caller counted it in ``_sealed``."""
        try:
            pid, data, entries = builder.seal()
            fut = self._pool.submit(self._put, pid, data, entries)
        except BaseException:
            self._done_one()
            raise
        with self._lock:
            self._futures.append(fut)
            self.stats.packs += 1

    def _done_one(self) -> None:
        with self._room:
            self._sealed -= 1
            self._room.notify_all()

    def _put(self, pid: PackId, data: bytearray, entries: list[Entry]) -> PackRecord:
        try:
            self.repo.store.put(pack_key(pid), data)
            faults.point("after_pack")
            rec = PackRecord(pid, len(data), entries)
            flush_now: list[PackRecord] = []
            with self._lock:
                self._unindexed.append(rec)
                if len(self._unindexed) >= INDEX_EVERY:
                    flush_now, self._unindexed = self._unindexed, []
            if flush_now:
                self.repo.write_index(flush_now)
            return rec
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._done_one()

    def flush(self) -> None:
        """Upload the open pack, wait for every upload, write the index; raise any error.

        After ``flush`` returns every blob added so far is durable and indexed.
        """
        with self._lock:
            open_builders = list(self._builders.values())
            self._builders = {BlobType.DATA: PackBuilder(), BlobType.TREE: PackBuilder()}
        for builder in open_builders:
            if len(builder):
                with self._lock:
                    self._sealed += 1
                self._upload(builder)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        if self._error is not None:
            raise self._error
        with self._lock:
            rest, self._unindexed = self._unindexed, []
        if rest:
            self.repo.write_index(rest)
        with self._lock:
            self._pending.clear()

    def close(self) -> None:
        """Stop the upload threads (after ``flush``, or to abandon the work)."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
