"""``Repository``: open or create one, load its index, read and write blobs and snapshots."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from hometier import faults
from hometier.errors import IntegrityError, NotFound
from hometier.repo import codec
from hometier.repo.config import (
    CONFIG_KEY,
    NotARepository,
    RepoConfig,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
)
from hometier.repo.ids import BlobId, PackId, SnapshotId, blob_id, pack_key, plain_hash
from hometier.repo.index import (
    Index,
    Location,
    PackRecord,
    RawPack,
    decode_index_raw,
    encode_index,
)
from hometier.repo.snapshot import Snapshot, user_key
from hometier.repo.tree import Node, decode_tree
from hometier.repo.writer import BlobWriter
from hometier.store import ObjectExists, ObjectNotFound, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

PRUNE_PREFIX = "prune/"


def tombstoned_packs(store: Store) -> set[bytes]:
    """Packs named by the prune marks under ``prune/`` (see engine/prune.py)."""
    out: set[bytes] = set()
    for obj in store.list(PRUNE_PREFIX):
        try:
            doc = json.loads(store.get(obj.key))
            out.update(bytes.fromhex(p) for p in doc.get("packs", []))
        except (ValueError, TypeError, ObjectNotFound):
            continue  # a mark being deleted by the prune that finished it
    return out


__all__ = [
    "NotARepository",
    "Repository",
    "RepositoryExists",
    "RepositoryNotFound",
    "SnapshotNotFound",
    "UnsupportedVersion",
]

GAP = 256 * 1024
"""Blobs of one pack closer than this are fetched in one range request."""
SEGMENT = 8 * 1024 * 1024
"""The most one range request fetches; bounds memory per fetch worker."""
FETCH_SLOTS = threading.BoundedSemaphore(12)
"""Segments being fetched and handed out at once in this process, by every reader
together: about ``SEGMENT`` + one decoded chunk (<= 4 MiB) each, so ~150 MB at most."""


class SnapshotNotFound(NotFound):
    """Snapshot {} not found."""


class Repository:
    """An opened repository. Thread-safe for reading; writing goes through ``writer()``."""

    def __init__(self, store: Store, config: RepoConfig) -> None:
        self.store = store
        self.config = config
        self.index = Index()
        self.doomed: set[bytes] = set()
        """Packs a prune has marked for deletion: readable, but never deduplicated against."""
        self._loaded_index: set[str] = set()
        self._written: set[str] = set()
        self._index_lock = threading.Lock()

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, store: Store) -> Repository:
        """Open an existing repository; ``RepositoryNotFound`` / ``NotARepository``."""
        try:
            data = store.get(CONFIG_KEY)
        except ObjectNotFound:
            if next(iter(store.list("")), None) is not None:
                raise NotARepository(store.url) from None
            raise RepositoryNotFound(store.url) from None
        return cls(store, RepoConfig.from_bytes(data, store.url))

    @classmethod
    def create(cls, store: Store, config: RepoConfig | None = None) -> Repository:
        """Create a repository in an empty location (atomic where the store allows).

        Raises ``NotARepository`` if the location holds anything, including another
        repository (use ``open`` for that).
        """
        if next(iter(store.list("")), None) is not None:
            if store.exists(CONFIG_KEY):
                raise RepositoryExists(store.url)
            raise NotARepository(store.url)
        config = config or RepoConfig.new()
        try:
            store.put(CONFIG_KEY, config.to_bytes(), if_absent=True)
        except ObjectExists:
            raise RepositoryExists(store.url) from None
        log.info("created repository %s at %s", config.id, store.url)
        return cls(store, config)

    @classmethod
    def open_or_create(cls, store: Store) -> tuple[Repository, bool]:
        """Open, or create in an empty location; returns (repository, created)."""
        try:
            return cls.open(store), False
        except RepositoryNotFound:
            try:
                return cls.create(store), True
            except RepositoryExists:
                # Someone else created it between our two looks.
                return cls.open(store), False

    @property
    def key(self) -> bytes:
        return self.config.blob_key

    def blob_id(self, data: bytes | memoryview) -> BlobId:
        return blob_id(self.config.blob_key, data)

    # --- index --------------------------------------------------------------------

    def load_index(self, workers: int = 8, *, errors: list[str] | None = None) -> int:
        """Read every index object not read yet; returns how many blobs are known.

        Idempotent and cheap to call again: only new index objects are fetched. A
        damaged object raises ``IntegrityError``, or, when ``errors`` is given, is
        recorded there and skipped (``check`` reports every problem at once).
        """
        present = {o.key for o in self.store.list("index/")}
        self.doomed = tombstoned_packs(self.store)
        # Objects this process wrote may not be listed yet (list-after-write lags on some
        # stores): only an object read from a listing and gone from it means a prune ran.
        if (self._loaded_index - self._written) - present:
            # A prune consolidated the index and deleted packs: start afresh, so no
            # location in a deleted pack survives in memory.
            with self._index_lock:
                self.index = Index()
                self._loaded_index = set()
                self._written = set()
        keys = sorted(present - self._loaded_index)
        if not keys:
            return len(self.index)

        def read(key: str) -> list[RawPack]:
            data = self.store.get(key)
            if plain_hash(data).hex() != key.rsplit("/", 1)[-1]:
                raise IntegrityError(f"index object {key} does not match its name")
            return decode_index_raw(data)

        def fetch(key: str) -> tuple[str, list[RawPack]]:
            try:
                return key, _read_twice(f"index object {key}", lambda: read(key))
            except (IntegrityError, ObjectNotFound) as exc:
                if errors is None:
                    raise
                errors.append(f"{key}: {exc}")
                return key, []

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
            for key, recs in pool.map(fetch, keys):
                for rec in recs:
                    self.index.add_raw(rec, replace=self.doomed)
                with self._index_lock:
                    self._loaded_index.add(key)
        return len(self.index)

    def write_index(self, packs: list[PackRecord]) -> str:
        """Write one index object naming ``packs`` (already durable); returns its key."""
        data = encode_index(packs)
        key = f"index/{plain_hash(data).hex()}"
        try:
            self.store.put(key, data, if_absent=True)
        except ObjectExists:
            pass
        faults.point("after_index")
        for rec in packs:
            self.index.add_pack(rec, replace=self.doomed)
        with self._index_lock:
            self._loaded_index.add(key)
            self._written.add(key)
        return key

    def writer(self, *, pack_size: int = 32 * 1024 * 1024, uploads: int = 2) -> BlobWriter:
        return BlobWriter(self, pack_size=pack_size, uploads=uploads)

    # --- reading blobs --------------------------------------------------------------

    def known(self, bid: BlobId) -> bool:
        """True if the blob is stored in a pack that no prune has marked for deletion."""
        loc = self.index.get(bid)
        return loc is not None and loc.pack not in self.doomed

    def loaded_index_keys(self) -> set[str]:
        with self._index_lock:
            return set(self._loaded_index)

    def locate(self, bid: BlobId) -> Location:
        """Where a blob is; reads new index objects once if it is not known yet (a
        long-running process sees what other processes wrote). ``IntegrityError``."""
        loc = self.index.get(bid)
        if loc is None:
            self.load_index()
            loc = self.index.get(bid)
        if loc is None:
            raise IntegrityError(f"blob {bid.hex()[:16]} is referenced but not in the index")
        return loc

    def decode_blob(self, bid: BlobId, loc: Location, stored: bytes | memoryview) -> bytes:
        """Decompress and verify a stored blob against its id; ``IntegrityError`` on mismatch."""
        data = codec.decode(loc.comp, stored, loc.raw_len)
        if blob_id(self.config.blob_key, data) != bid:
            raise IntegrityError(
                f"blob {bid.hex()[:16]} in pack {loc.pack.hex()[:16]} does not match its hash"
            )
        return data

    def read_blob(self, bid: BlobId) -> bytes:
        loc = self.locate(bid)
        (stored,) = self.store.get_ranges(
            pack_key(loc.pack), [(loc.offset, loc.offset + loc.stored_len)]
        )
        try:
            return self.decode_blob(bid, loc, stored)
        except IntegrityError as exc:
            return self._read_again(bid, loc, exc)

    def _read_again(self, bid: BlobId, loc: Location, exc: IntegrityError) -> bytes:
        """A blob that failed verification, fetched alone once more: a transfer can go
        wrong where the stored object is fine. A second failure is the object's own."""
        log.warning("blob %s failed verification (%s); reading it again", bid.hex()[:16], exc)
        (stored,) = self.store.get_ranges(
            pack_key(loc.pack), [(loc.offset, loc.offset + loc.stored_len)]
        )
        return self.decode_blob(bid, loc, stored)

    def load_tree(self, bid: BlobId) -> list[Node]:
        return decode_tree(self.read_blob(bid))

    def for_each_blob(
        self,
        ids: Iterable[BlobId],
        fn: Callable[[BlobId, bytes], None],
        *,
        workers: int = 4,
    ) -> None:
        """Fetch, verify and hand every blob of ``ids`` to ``fn`` (called in worker threads).

        Each pack is fetched once, by ranges in offset order, with nearby blobs coalesced
        into one request of at most ``SEGMENT`` bytes; packs are fetched ``workers`` at
        a time, and never more than ``FETCH_SLOTS`` segments at once in the whole process
        (a login storm of many restores stays bounded in memory). Each distinct id is
        passed to ``fn`` once; ``fn`` must not fetch blobs itself. The first error (from
        the store, verification or ``fn``) stops the work and is raised.
        """
        # Only (offset, end, id) per blob while grouping: a restore may ask for millions.
        by_pack: dict[bytes, list[tuple[int, int, bytes]]] = {}
        seen: set[bytes] = set()
        for bid in ids:
            if bid in seen:
                continue
            seen.add(bid)
            loc = self.locate(bid)
            by_pack.setdefault(loc.pack, []).append((loc.offset, loc.offset + loc.stored_len, bid))
        del seen
        jobs: list[tuple[bytes, list[bytes], int, int]] = []
        for pack, items in sorted(by_pack.items()):
            items.sort()
            start = end = -1
            members: list[bytes] = []
            for off, stop, key in items:
                if members and (off - end > GAP or stop - start > SEGMENT):
                    jobs.append((pack, members, start, end))
                    members = []
                if not members:
                    start = off
                members.append(key)
                end = max(end, stop) if len(members) > 1 else stop
            if members:
                jobs.append((pack, members, start, end))
        by_pack.clear()

        def run(job: tuple[bytes, list[bytes], int, int]) -> None:
            pack, members, start, end = job
            with FETCH_SLOTS:
                (data,) = self.store.get_ranges(pack_key(PackId(pack)), [(start, end)])
                view = memoryview(data)
                for bid in members:
                    loc = self.locate(BlobId(bid))
                    rel = loc.offset - start
                    try:
                        data = self.decode_blob(BlobId(bid), loc, view[rel : rel + loc.stored_len])
                    except IntegrityError as exc:
                        data = self._read_again(BlobId(bid), loc, exc)
                    fn(BlobId(bid), data)
                view.release()
                del data

        _run_bounded(run, jobs, workers)

    # --- snapshots ----------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> SnapshotId:
        """Write a snapshot document; its blobs must already be durable and indexed."""
        data = snap.to_bytes()
        sid = SnapshotId(plain_hash(data).hex())
        try:
            self.store.put(f"snapshots/{user_key(snap.user)}/{sid}", data, if_absent=True)
        except ObjectExists:
            pass
        snap.id = sid
        return sid

    def snapshot_keys(self, user: str | None = None) -> list[str]:
        prefix = "snapshots/" if user is None else f"snapshots/{user_key(user)}/"
        return [o.key for o in self.store.list(prefix)]

    def _load_snapshot_key(self, key: str) -> Snapshot:
        sid = SnapshotId(key.rsplit("/", 1)[-1])

        def read() -> Snapshot:
            data = self.store.get(key)
            if plain_hash(data).hex() != sid:
                raise IntegrityError(f"snapshot {sid} does not match its name")
            return Snapshot.from_bytes(data, sid)

        return _read_twice(f"snapshot {sid[:12]}", read)

    def list_snapshots(
        self, user: str | None = None, workers: int = 8, *, errors: list[str] | None = None
    ) -> list[Snapshot]:
        """Snapshots (of one user, or all), oldest first. A damaged snapshot raises
        ``IntegrityError`` or, when ``errors`` is given, is recorded there and left out."""
        keys = self.snapshot_keys(user)
        if not keys:
            return []

        def load(key: str) -> Snapshot | None:
            try:
                return self._load_snapshot_key(key)
            except ObjectNotFound:
                return None  # forgotten by a prune between the listing and the read
            except IntegrityError as exc:
                if errors is None:
                    raise
                errors.append(f"{key}: {exc}")
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
            snaps = [s for s in pool.map(load, keys) if s is not None]
        if user is not None:
            snaps = [s for s in snaps if s.user == user]
        return sorted(snaps, key=lambda s: (s.time_ns, s.id))

    def find_snapshot(self, ref: str, user: str | None = None) -> Snapshot:
        """A snapshot by id or unique id prefix (at least 6 hex digits), or ``latest``."""
        if ref == "latest":
            # The newest complete one (an incomplete snapshot lacks unreadable files).
            snaps = self.list_snapshots(user)
            complete = [s for s in snaps if s.stats.complete] or snaps
            if not complete:
                raise SnapshotNotFound(f"latest of {user}" if user else "latest")
            return complete[-1]
        ref = ref.lower()
        if len(ref) < 6 or any(c not in "0123456789abcdef" for c in ref):
            raise SnapshotNotFound(ref)
        matches = [k for k in self.snapshot_keys(user) if k.rsplit("/", 1)[-1].startswith(ref)]
        if len(matches) != 1:
            raise SnapshotNotFound(ref if not matches else f"{ref} (ambiguous)")
        snap = self._load_snapshot_key(matches[0])
        if user is not None and snap.user != user:
            raise SnapshotNotFound(ref)
        return snap

    def delete_snapshot(self, snap: Snapshot) -> None:
        self.store.delete(f"snapshots/{user_key(snap.user)}/{snap.id}")


def _read_twice(what: str, read: Callable[[], T]) -> T:
    """``read()``, and once more if what it read failed verification (the object's hash,
    its length): a transfer can go wrong where the stored object is fine, as restic
    also assumes. A second failure is the object's own and is raised."""
    try:
        return read()
    except IntegrityError as exc:
        log.warning("%s failed verification (%s); reading it again", what, exc)
        return read()


def _run_bounded(fn: Callable[[Any], None], jobs: list[Any], workers: int) -> None:
    """Run ``fn`` over ``jobs`` with at most ``workers`` at once; raise the first error."""
    if not jobs:
        return
    workers = max(1, min(workers, len(jobs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[None]] = set()
        it = iter(jobs)
        try:
            for job in it:
                pending.add(pool.submit(fn, job))
                if len(pending) >= workers * 2:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
