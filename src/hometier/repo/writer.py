"""``SharedWriter``: deduplicate, compress and pack blobs, upload packs in the background.

One ``SharedWriter`` per repository and process is shared by every backup running in it,
each through its own ``BlobWriter``: content that one backup is still uploading is
not stored again by another (it waits for it instead), and each session collects the
locations of every blob its snapshot reaches, for the snapshot's locator.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hometier import faults
from hometier.cpu import cores
from hometier.errors import IntegrityError
from hometier.repo import codec
from hometier.repo.ids import BlobId, BlobType, Compression, PackId, pack_key
from hometier.repo.index import Location, PackRecord
from hometier.repo.locator import LocatorBuilder
from hometier.repo.pack import Entry, PackBuilder

if TYPE_CHECKING:
    from hometier.repo.repository import Repository

INDEX_EVERY = 16
"""Write an index object every this many packs, so a crashed backup's packs are reused."""
LANE_BATCH = 1024 * 1024
"""Raw bytes of queued blobs handed to the lane as one job (one hand-off, not one a file)."""
LANE_QUEUED = 16 * 1024 * 1024
"""Raw bytes that may wait for the lane before ``add`` waits for it."""
LANES = max(1, min(4, cores() - 1))
"""Compressing threads of a shared writer: one on two cores (beside the walk), up to
four on larger machines (the readers of a large folder queue their files to them)."""
_UNJUDGED = -1
"""Not a pack size: ``BlobWriter.reuse`` has not judged the pack yet."""


@dataclass
class WriterStats:
    blobs_new: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    packs: int = 0


class _Builder(PackBuilder):
    """A pack being filled, and the sessions whose blobs it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[BlobWriter] = set()


class SharedWriter:
    """Adds blobs to a repository; thread-safe; shared by the sessions of one process.

    ``add`` returns at once for a blob the repository (or this writer) already has.
    A new blob given as ``bytes`` is reserved (pending) and queued; the *lane*,
    ``lanes`` background threads, compresses queued blobs in batches and appends them to
    the open pack (one for data, one for trees). Compression then runs beside the caller's own
    work instead of after it: an archive's walker reads the small files of most folders
    itself, and its Python per file and zstd per byte overlap on two cores. A blob
    given as a view (a chunk of a larger file, in a buffer its caller reuses) is
    compressed in the calling thread, as is every blob without a lane (``lanes=0``).
    A full pack is sealed and uploaded on a background thread, ``uploads`` at a time.
    At most ``uploads + 1`` sealed packs wait or travel: appending blocks, holding no
    pack, until one is durable; and at most ``LANE_QUEUED`` raw bytes wait for the
    lane. Memory is therefore bounded by about ``(uploads + 3) * pack_size +
    LANE_QUEUED`` whatever the number of calling threads and sessions. A blob is
    visible to readers only once the index object naming its pack is written (every
    ``INDEX_EVERY`` packs, and at every ``flush``); until then it is *pending*.
    """

    def __init__(
        self, repo: Repository, *, pack_size: int, uploads: int, lanes: int = LANES
    ) -> None:
        self.repo = repo
        self.pack_size = pack_size
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        # Trees go in packs of their own: reading a snapshot's trees (restore, the parent
        # of an incremental backup) must not drag file data along with them.
        self._builders = {BlobType.DATA: _Builder(), BlobType.TREE: _Builder()}
        self._max_sealed = uploads + 1
        self._sealed = 0
        self._room = threading.Condition(self._lock)
        self._pool = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix="upload")
        self._lane = (
            ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="compress") if lanes else None
        )
        # Blobs reserved and not yet in a pack: the batch being filled, the raw bytes
        # queued (filled and handed over), and the numbers of the batches not done.
        self._batch: list[tuple[BlobWriter, BlobType, bytes, BlobId]] = []
        self._batch_bytes = 0
        self._queued = 0
        self._batches = 0
        self._lane_open: set[int] = set()
        # Every sealed pack has a number; ``_state`` holds those not indexed yet: 0 while
        # it uploads, 1 once durable (and in ``_unindexed``). A flush waits for the
        # numbers up to the last pack it sealed, whoever uploads and indexes them.
        self._next = 0
        self._state: dict[int, int] = {}
        self._seq_of: dict[bytes, int] = {}
        self._unindexed: list[PackRecord] = []
        self._index_lock = threading.Lock()
        self.error: BaseException | None = None
        self.closed = False
        self.users = 0
        self.joined = 0
        """Blobs a session found in flight (pending) instead of storing them again."""

    def pending(self, bid: bytes) -> bool:
        with self._lock:
            return bid in self._pending

    def _number(self) -> int:
        """Count a sealed pack (the caller holds the lock)."""
        seq = self._next
        self._next += 1
        self._state[seq] = 0
        self._sealed += 1
        return seq

    def add(
        self,
        session: BlobWriter,
        typ: BlobType,
        data: bytes | memoryview,
        bid: BlobId,
        *,
        force: bool = False,
        checked: bool = False,
    ) -> bool:
        """Store ``data`` unless pending or (without ``force``) known; returns whether it
        was new. ``checked``: the caller has just found it absent from the index (one
        lookup, not two, per new blob; a blob indexed in the instant since would only be
        stored twice, which the index allows)."""
        if self.error is not None:
            raise self.error
        with self._lock:
            if bid in self._pending:
                return False
            if not force and not checked and self.repo.known(bid):
                return False
            self._pending.add(bid)
        if self._lane is not None and type(data) is bytes:
            self._queue(session, typ, data, bid)
            return True
        try:
            comp, stored = codec.encode(data)
        except BaseException:
            self._unreserve([bid])
            raise
        self._append(session, typ, bid, comp, stored, len(data))
        return True

    def _unreserve(self, bids: list[BlobId]) -> None:
        """Blobs that will not be stored are not pending any more: a session waiting for
        one of them must not wait forever."""
        with self._room:
            self._pending.difference_update(bids)
            self._room.notify_all()

    def _append(
        self,
        session: BlobWriter,
        typ: BlobType,
        bid: BlobId,
        comp: Compression,
        stored: bytes,
        raw_len: int,
    ) -> None:
        """Put one encoded blob in the open pack of its type; seal and upload it if full."""
        sealed: tuple[_Builder, int] | None = None
        with self._room:
            while self._sealed >= self._max_sealed and self.error is None:
                self._room.wait()
            if self.error is not None:
                raise self.error
            builder = self._builders[typ]
            builder.add(bid, typ, comp, stored, raw_len)
            builder.sessions.add(session)
            session.count_new(raw_len, len(stored))
            if builder.size >= self.pack_size:
                self._builders[typ] = _Builder()
                sealed = builder, self._number()
        if sealed is not None:
            self._upload(*sealed)

    # --- the lane: compression beside the caller ---------------------------------------

    def _queue(self, session: BlobWriter, typ: BlobType, data: bytes, bid: BlobId) -> None:
        """Queue a reserved blob for the lane; hand the batch over once it is full."""
        with self._room:
            while self._queued >= LANE_QUEUED and self.error is None:
                self._room.wait()
            failed = self.error
            if failed is None:
                self._batch.append((session, typ, data, bid))
                self._batch_bytes += len(data)
                self._queued += len(data)
            full = failed is None and self._batch_bytes >= LANE_BATCH
            job = self._take_batch() if full else None
        if failed is not None:
            self._unreserve([bid])
            raise failed
        if job is not None:
            self._submit(*job)

    def _take_batch(self) -> tuple[int, list[tuple[BlobWriter, BlobType, bytes, BlobId]]]:
        """The batch being filled, numbered, as a lane job (the caller holds the lock)."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        seq = self._batches
        self._batches += 1
        self._lane_open.add(seq)
        return seq, batch

    def _submit(self, seq: int, batch: list[tuple[BlobWriter, BlobType, bytes, BlobId]]) -> None:
        assert self._lane is not None
        try:
            self._lane.submit(self._compress, seq, batch)
        except BaseException as exc:  # the lane is shut down: the writer was closed
            self._lane_failed(exc, seq, batch)
            raise

    def _compress(self, seq: int, batch: list[tuple[BlobWriter, BlobType, bytes, BlobId]]) -> None:
        """Run by the lane: encode and append a batch, in the order it was queued."""
        done = 0
        try:
            for session, typ, data, bid in batch:
                comp, stored = codec.encode(data)
                self._append(session, typ, bid, comp, stored, len(data))
                done += 1
                with self._room:
                    self._queued -= len(data)
                    self._room.notify_all()
        except BaseException as exc:  # noqa: BLE001 - every waiter sees it
            self._lane_failed(exc, seq, batch[done:])
            return
        with self._room:
            self._lane_open.discard(seq)
            self._room.notify_all()

    def _lane_failed(
        self, exc: BaseException, seq: int, rest: list[tuple[BlobWriter, BlobType, bytes, BlobId]]
    ) -> None:
        """A batch that could not be stored fails the writer; its blobs stop being pending."""
        self._fail(exc)
        with self._room:
            self._queued -= sum(len(data) for _s, _t, data, _b in rest)
            self._pending.difference_update(bid for _s, _t, _d, bid in rest)
            self._lane_open.discard(seq)
            self._room.notify_all()

    def _drain_lane(self) -> None:
        """Hand over the batch being filled and wait for every batch handed over so far."""
        with self._room:
            job = self._take_batch() if self._batch else None
            until = self._batches - 1
        if job is not None:
            self._submit(*job)
        with self._room:
            while self.error is None and any(s <= until for s in self._lane_open):
                self._room.wait()
            if self.error is not None:
                raise self.error

    def _upload(self, builder: _Builder, seq: int) -> None:
        """Seal and queue one pack numbered ``seq``."""
        try:
            pid, data, entries = builder.seal()
            sessions = list(builder.sessions)
            self._pool.submit(self._put, seq, pid, data, entries, sessions)
        except BaseException as exc:
            self._fail(exc)
            self._done_one()
            raise
        for s in sessions:
            s.stats.packs += 1

    def _done_one(self) -> None:
        with self._room:
            self._sealed -= 1
            self._room.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._room:
            if self.error is None:
                self.error = exc
            self._room.notify_all()

    def _put(
        self,
        seq: int,
        pid: PackId,
        data: bytearray,
        entries: list[Entry],
        sessions: list[BlobWriter],
    ) -> None:
        try:
            self.repo.store.put(pack_key(pid), data)
            faults.point("after_pack")
            rec = PackRecord(pid, len(data), entries)
            for s in sessions:
                s.packed(rec)
            with self._room:
                self._state[seq] = 1
                self._seq_of[pid] = seq
                self._unindexed.append(rec)
                full = len(self._unindexed) >= INDEX_EVERY
                self._room.notify_all()
            if full:
                self._index_unindexed()
        except BaseException as exc:  # noqa: BLE001 - every waiter sees it
            self._fail(exc)
        finally:
            self._done_one()

    def _index_unindexed(self) -> None:
        """Index every durable pack not indexed yet; their blobs stop being pending."""
        with self._index_lock:
            with self._lock:
                recs, self._unindexed = self._unindexed, []
            if not recs:
                return
            self.repo.write_index(recs)
            with self._room:
                for rec in recs:
                    self._state.pop(self._seq_of.pop(rec.id, -1), None)
                    for e in rec.entries:
                        self._pending.discard(e.id)
                self._room.notify_all()

    def _wait(self, until: int, state: int) -> None:
        """Wait until no pack numbered up to ``until`` is below ``state`` + 1."""
        with self._room:
            while self.error is None and any(
                s <= until and st <= state for s, st in self._state.items()
            ):
                self._room.wait()
            if self.error is not None:
                raise self.error

    def flush(self) -> None:
        """Upload the open packs, wait for every upload, write the index; raise any error.

        After ``flush`` returns every blob added so far, by any session, is durable and
        indexed (concurrent flushes and uploads of other sessions included).
        """
        if self._lane is not None:
            self._drain_lane()
        sealed: list[tuple[_Builder, int]] = []
        with self._lock:
            for typ, builder in list(self._builders.items()):
                if len(builder):
                    self._builders[typ] = _Builder()
                    sealed.append((builder, self._number()))
            until = self._next - 1
        for builder, seq in sealed:
            self._upload(builder, seq)
        self._wait(until, 0)  # every pack up to ours is durable
        self._index_unindexed()
        self._wait(until, 1)  # and indexed, by us or by whoever took it

    def nap(self, seconds: float) -> None:
        """Wait until something changes (a pack filled, uploaded, indexed), at most
        ``seconds``."""
        with self._room:
            self._room.wait(seconds)

    def close(self) -> None:
        """Stop the upload threads (after ``flush``, or to abandon the work)."""
        if not self.closed:
            self.closed = True
            if self._lane is not None:
                self._lane.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True, cancel_futures=True)


class BlobWriter:
    """One backup's use of the repository's shared ``SharedWriter``: its own statistics,
    and the location of every blob it added or found present (its snapshot's locator).
    """

    def __init__(self, shared: SharedWriter, *, locate: bool = True) -> None:
        self.shared = shared
        self.locate = locate
        self.repo = shared.repo
        self.stats = WriterStats()
        self.locations = LocatorBuilder()
        self._waiting: set[bytes] = set()
        self._usable: dict[bytes, int | None] = {}
        """Pack id -> its size if it may be referenced, else None (``reuse``)."""
        self._doomed: set[bytes] = self.repo.doomed
        """The marks ``_usable`` was decided with."""
        self._lock = threading.Lock()
        self._closed = False

    def count_new(self, raw: int, stored: int) -> None:
        with self._lock:
            self.stats.blobs_new += 1
            self.stats.bytes_new_raw += raw
            self.stats.bytes_new_stored += stored

    def packed(self, rec: PackRecord) -> None:
        """A pack holding some of this session's blobs is durable: note their places."""
        with self._lock:
            if not self._waiting:
                return
            for e in rec.entries:
                if e.id in self._waiting:
                    self._waiting.discard(e.id)
                    self.locations.note(rec.id, rec.size, e)

    def _located(self, bid: BlobId) -> bool:
        """Note where a present blob is; False if it is not usable (absent, marked)."""
        loc = self.repo.blobs.get(bid, unmarked=True)
        if loc is None:
            return False
        if not self.locate:
            return True
        size = self.repo.blobs.size_of(loc.pack)
        with self._lock:
            self.locations.note_location(bid, loc, size)
        return True

    def has(self, bid: BlobId) -> bool:
        """True if the blob is present (indexed in an unmarked pack) or being written;
        the snapshot may then reference it without storing it."""
        with self._lock:
            if bid in self.locations or bid in self._waiting:
                return True
        if self.shared.pending(bid):
            if self.locate:
                with self._lock:
                    self._waiting.add(bid)
            self.shared.joined += 1
            return True
        return self._located(bid)

    def reuse(self, bid: BlobId, then: Location | None) -> bool:
        """``has(bid)`` for a blob an earlier snapshot referenced, ``then`` being where
        that snapshot's locator put it. A pack never changes: if the index still holds
        that pack, alive and marked by no prune, and agrees with the locator about the
        first of its blobs met here, every blob the locator places in it is there. One
        index lookup per pack then answers for all of its blobs, instead of one per
        blob. Otherwise (a prune moved, marked or deleted it; the locator disagrees with
        the index) the index decides, as ``has`` does."""
        if then is not None:
            with self._lock:
                if bid in self.locations:
                    return True
                if self._doomed is not self.repo.doomed:
                    # Marks read since (a prune's sync, another backup of this process):
                    # every pack is judged again.
                    self._usable.clear()
                    self._doomed = self.repo.doomed
                size = self._usable.get(then.pack, _UNJUDGED)
                if size != _UNJUDGED:
                    # The common case, under one lock: the pack was judged already.
                    if size is not None and then.offset + then.stored_len <= size:
                        if self.locate:
                            self.locations.note_location(bid, then, size)
                        return True
            if size == _UNJUDGED:
                size = self._usable_pack(bid, then)
                with self._lock:
                    self._usable[then.pack] = size
                if size is not None and then.offset + then.stored_len <= size:
                    if self.locate:
                        with self._lock:
                            self.locations.note_location(bid, then, size)
                    return True
        return self.has(bid)

    def _usable_pack(self, bid: BlobId, then: Location) -> int | None:
        """The size of ``then.pack`` if an earlier locator's places in it may be used."""
        if then.pack in self.repo.doomed:  # by id: a mark on a pack synced in since
            return None
        size = self.repo.blobs.usable_pack(then.pack)
        if size is None or then not in self.repo.blobs.locations(bid):
            return None
        return size

    def add(
        self,
        typ: BlobType,
        data: bytes | memoryview,
        bid: BlobId | None = None,
        *,
        force: bool = False,
    ) -> tuple[BlobId, bool]:
        """Store ``data`` unless it is already present; returns (id, whether it was new).
        ``force`` stores it again even if indexed elsewhere (prune's repacking)."""
        if bid is None:
            bid = self.repo.blob_id(data)
        if not force and self.has(bid):
            return bid, False
        if self.locate:
            with self._lock:
                self._waiting.add(bid)
        if self.shared.add(self, typ, data, bid, force=force, checked=not force):
            return bid, True
        # Indexed or pending meanwhile (another session): wait for it like any other.
        return bid, False

    def flush(self) -> None:
        """Make every blob of this session durable and indexed, and locate each.

        A blob this session found pending may belong to another session that reserved it
        and had not put it in a pack yet when the open packs were sealed: such a blob is
        waited for (the shared writer is flushed again once it is in a pack), never
        reported missing while it is still in flight.
        """
        while True:
            self.shared.flush()
            with self._lock:
                waiting, self._waiting = self._waiting, set()
            late: set[bytes] = set()
            for bid in waiting:
                if bid in self.locations:
                    continue
                loc = self.repo.blobs.get(BlobId(bid))
                if loc is None:
                    if self.shared.pending(bid):
                        late.add(bid)
                        continue
                    raise IntegrityError(f"blob {bid.hex()[:16]} was written but is not indexed")
                with self._lock:
                    self.locations.note_location(
                        BlobId(bid), loc, self.repo.blobs.size_of(loc.pack)
                    )
            if not late:
                return
            with self._lock:
                self._waiting |= late
            self.shared.nap(0.02)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.repo.release_writer(self.shared)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
