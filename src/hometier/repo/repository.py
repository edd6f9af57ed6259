"""``Repository``: open or create one, find blobs, read and write blobs and snapshots.

Where a blob is comes from one of two places. A snapshot's **locator** (``locator.py``)
names exactly the blobs that snapshot reaches: restore, verification, browsing and
downloads read it, so they cost O(that home). The repository's whole **index** is
cached on local disk (``blobindex.BlobIndex``, synced from new index objects): backup
deduplicates against it, and reads fall back to it for a snapshot without a locator.
No process holds the whole index in memory.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hometier import faults
from hometier.errors import IntegrityError, NotFound
from hometier.repo import codec
from hometier.repo.blobindex import BlobIndex
from hometier.repo.config import (
    CONFIG_KEY,
    NotARepository,
    RepoConfig,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
)
from hometier.repo.fetch import (
    FETCH_SLOTS,
    StoredFn,
    Where,
    plan_jobs,
    read_twice,
    run_bounded,
)
from hometier.repo.ids import BlobId, PackId, SnapshotId, blob_id, pack_key, plain_hash
from hometier.repo.index import (
    Location,
    PackRecord,
    RawPack,
    decode_index_raw,
    encode_index,
    encode_raw,
    split_packs,
)
from hometier.repo.locator import (
    PREFIX as LOCATOR_PREFIX,
)
from hometier.repo.locator import (
    Locator,
    LocatorBuilder,
    decode_locator,
    encode_locator,
    newest,
)
from hometier.repo.pack import FOOTER, Entry, parse_trailer
from hometier.repo.snapshot import Snapshot, user_key
from hometier.repo.tree import Node, decode_tree
from hometier.repo.writer import LANES, BlobWriter, SharedWriter
from hometier.store import ObjectExists, ObjectInfo, ObjectNotFound, Store

if TYPE_CHECKING:
    from hometier.repo.views import SnapshotView, SnapshotWhere

log = logging.getLogger(__name__)

PRUNE_PREFIX = "prune/"
EPOCH_KEY = "epoch"
"""Rewritten (different bytes each time) by every prune or repair *before* it deletes an
index object or a pack: a process that finds it unchanged since its last listing of
``index/`` knows that no location it holds has gone (see ``load_index``)."""
INDEX_REUSE = 300.0
"""Seconds a backup goes on with this process's last listing of ``index/`` (the marks and
the epoch are still read every time): listing ``index/`` costs O(every index object the
bucket holds), ~95 ms of CPU per 3,000 objects on SeaweedFS, which made each archive's
cost grow with the hub. Only deduplication against what *other* processes wrote since
waits for the next listing."""
LOCATOR_CACHE = 300_000
"""Blob entries of recently read locators kept in memory (~150 bytes each)."""


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


class SnapshotNotFound(NotFound):
    """Snapshot {} not found."""


class Repository:
    """An opened repository. Thread-safe for reading; writing goes through ``writer()``.

    ``cache_dir``: where the local index cache lives (a folder per repository is made
    inside); None keeps it in a private temporary folder removed at exit.
    """

    def __init__(self, store: Store, config: RepoConfig, *, cache_dir: str | None = None) -> None:
        self.store = store
        self.config = config
        self.cache_dir = cache_dir
        self._blobs: BlobIndex | None = None
        self.doomed: set[bytes] = set()
        """Packs a prune has marked for deletion: readable, but never deduplicated against."""
        self._listed: tuple[float, bytes | None] | None = None
        """When ``index/`` was last listed in full (monotonic) and the epoch read then."""
        self._lock = threading.Lock()
        self._writer: SharedWriter | None = None
        self._locators: OrderedDict[str, Locator] = OrderedDict()
        self._locator_sizes: dict[str, int] = {}
        """Each cached locator's entries when it was cached, and their sum: summing them
        on every insert cost O(cached locators) each (3.6 s over 1,200 snapshots)."""
        self._locators_total = 0
        self._warned_no_locator = False

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, store: Store, *, cache_dir: str | None = None) -> Repository:
        """Open an existing repository; ``RepositoryNotFound`` / ``NotARepository``."""
        try:
            data = store.get(CONFIG_KEY)
        except ObjectNotFound:
            if next(iter(store.list("")), None) is None:
                raise RepositoryNotFound(store.url) from None
            # Something is there: if another process has just created the repository
            # (two archivers starting on an empty bucket), it is the config.
            try:
                data = store.get(CONFIG_KEY)
            except ObjectNotFound:
                raise NotARepository(store.url) from None
        return cls(store, RepoConfig.from_bytes(data, store.url), cache_dir=cache_dir)

    @classmethod
    def create(
        cls, store: Store, config: RepoConfig | None = None, *, cache_dir: str | None = None
    ) -> Repository:
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
        return cls(store, config, cache_dir=cache_dir)

    @classmethod
    def open_or_create(
        cls, store: Store, *, cache_dir: str | None = None
    ) -> tuple[Repository, bool]:
        """Open, or create in an empty location; returns (repository, created)."""
        try:
            return cls.open(store, cache_dir=cache_dir), False
        except RepositoryNotFound:
            try:
                return cls.create(store, cache_dir=cache_dir), True
            except RepositoryExists:
                # Someone else created it between our two looks.
                return cls.open(store, cache_dir=cache_dir), False

    @property
    def key(self) -> bytes:
        return self.config.blob_key

    def blob_id(self, data: bytes | memoryview) -> BlobId:
        return blob_id(self.config.blob_key, data)

    # --- the index (local cache of every index object) ---------------------------------

    @property
    def blobs(self) -> BlobIndex:
        """The whole index, on local disk; opened (not synced) on first use."""
        if self._blobs is None:
            with self._lock:
                if self._blobs is None:
                    self._blobs = BlobIndex(self._cache_folder())
        return self._blobs

    @property
    def index(self) -> BlobIndex:
        """The whole index as last synced (``load_index``)."""
        return self.blobs

    def _cache_folder(self) -> str:
        # The store URL is part of the name: a copy of a bucket elsewhere keeps its id.
        tag = hashlib.sha256(self.store.url.encode()).hexdigest()[:12]
        name = f"{self.config.id or 'repo'}-{tag}"
        base = self.cache_dir if self.cache_dir else _private_cache()
        return os.path.join(base, name)

    def load_index(self, workers: int = 8, *, errors: list[str] | None = None) -> int:
        """Sync the local index with the bucket: read the marks and every index object
        not read yet; forget packs whose index objects vanished. Returns how many
        records the cache holds.

        Idempotent and cheap to call again. A damaged object raises ``IntegrityError``,
        or, when ``errors`` is given, is recorded there and skipped.
        """
        # In this order: the epoch, the marks, then the listing. A sweep that began before
        # the epoch was read either finished before the marks were read (the listing
        # then shows its result) or still has its marks (whose packs stay excluded).
        epoch = self.read_epoch()
        doomed = tombstoned_packs(self.store)
        present = {o.key: o.size for o in self.store.list("index/")}
        self.blobs.sync(present, self.read_index_object, workers=workers, errors=errors)
        self.doomed = doomed
        self.blobs.set_marked(self.doomed)
        self._listed = (time.monotonic(), epoch)
        return len(self.blobs)

    def load_index_for_backup(self, workers: int = 8) -> int:
        """``load_index`` for a backup that starts: reuses this process's listing of
        ``index/`` if it is younger than ``INDEX_REUSE`` and no prune or repair has
        deleted anything since (the epoch is unchanged); reads the marks every time
        (format rule 4). Marks seen since the last listing stay in force until the next
        one: a sweep that deleted a marked pack and then its mark, after that listing,
        would otherwise leave the pack's old location looking usable."""
        listed = self._listed
        if listed is not None and time.monotonic() - listed[0] < INDEX_REUSE:
            doomed = tombstoned_packs(self.store)
            if self.read_epoch() == listed[1]:  # after the marks: see ``bump_epoch``
                self.doomed = self.doomed | doomed
                self.blobs.set_marked(self.doomed)
                return len(self.blobs)
        return self.load_index(workers)

    def read_epoch(self) -> bytes | None:
        """The bytes of ``epoch`` (None before the first prune or repair that deletes)."""
        try:
            return self.store.get(EPOCH_KEY)
        except ObjectNotFound:
            return None

    def bump_epoch(self, why: str) -> None:
        """Rewrite ``epoch`` before deleting an index object or a pack. A backup that
        read the marks and then found the epoch unchanged knows that every deletion since
        its listing of ``index/`` had its marks still in place when it read them."""
        doc = {"time": time.time(), "why": why, "nonce": os.urandom(8).hex()}
        self.store.put(EPOCH_KEY, json.dumps(doc).encode())

    def write_index(self, packs: list[PackRecord], *, target: int | None = None) -> list[str]:
        """Write index objects naming ``packs`` (already durable), as many as the bound
        needs; returns their keys. The blobs are known to this process at once."""
        keys = []
        for group in split_packs(packs, target):
            data = encode_index(group)
            key = f"index/{plain_hash(data).hex()}"
            try:
                self.store.put(key, data, if_absent=True)
            except ObjectExists:
                pass
            faults.point("after_index")
            self.blobs.add(key, group)
            keys.append(key)
        return keys

    def write_index_raw(self, packs: list[RawPack], *, target: int | None = None) -> list[str]:
        """``write_index`` for records whose entry tables are still packed."""
        keys = []
        for group in split_packs(packs, target):
            data = encode_raw(group)
            key = f"index/{plain_hash(data).hex()}"
            try:
                self.store.put(key, data, if_absent=True)
            except ObjectExists:
                pass
            self.blobs.add_raw(key, group)
            keys.append(key)
        return keys

    def read_index_object(self, key: str) -> list[RawPack]:
        """One index object, verified against its name; ``IntegrityError``."""

        def once() -> list[RawPack]:
            data = self.store.get(key)
            if plain_hash(data).hex() != key.rsplit("/", 1)[-1]:
                raise IntegrityError(f"index object {key} does not match its name")
            return decode_index_raw(data)

        return read_twice(f"index object {key}", once)

    def read_trailer(self, pid: bytes, size: int) -> list[Entry]:
        """A pack's entries from its trailer (two range requests); ``IntegrityError``."""
        key = pack_key(PackId(pid))
        if size < FOOTER.size:
            raise IntegrityError(f"pack {pid.hex()[:16]} is too short to hold a trailer")
        (foot,) = self.store.get_ranges(key, [(size - FOOTER.size, size)])
        tlen, _magic = FOOTER.unpack(foot)
        start = max(0, size - FOOTER.size - tlen)
        (tail,) = self.store.get_ranges(key, [(start, size)])
        return parse_trailer(tail, size)

    def writer(
        self,
        *,
        pack_size: int = 32 * 1024 * 1024,
        uploads: int = 2,
        lanes: int = LANES,
        locate: bool = True,
    ) -> BlobWriter:
        """A session on this process's shared writer (one per repository): concurrent
        backups never upload the same content twice. ``locate``: collect the location
        of every blob (for a snapshot's locator; prune's repacking does not need them).
        ``lanes``: threads that compress new blobs beside their callers (0: each caller
        compresses its own); like the other sizes, it applies
        when the shared writer is made, not to a session joining one already open."""
        with self._lock:
            w = self._writer
            if w is None or w.error is not None or w.closed:
                w = self._writer = SharedWriter(
                    self,
                    pack_size=pack_size,
                    uploads=uploads,
                    lanes=lanes,
                )
            w.users += 1
        return BlobWriter(w, locate=locate)

    def release_writer(self, w: SharedWriter) -> None:
        with self._lock:
            w.users -= 1
            if w.users > 0:
                return
            if self._writer is w:
                self._writer = None
        w.close()

    def known(self, bid: BlobId) -> bool:
        """True if the blob is stored in a pack that no prune has marked for deletion."""
        return self.blobs.known(bid)

    # --- locators ---------------------------------------------------------------------

    def write_locator(
        self, sid: str, records: list[PackRecord], generation: int = 0, *, target: int | None = None
    ) -> list[str]:
        """Write one generation of a snapshot's locator; returns its keys."""
        keys = []
        for key, data in encode_locator(sid, generation, records, target):
            try:
                self.store.put(key, data, if_absent=True)
            except ObjectExists:
                pass
            keys.append(key)
        return keys

    def locator_keys(self, sid: str) -> list[str]:
        return [o.key for o in self.store.list(f"{LOCATOR_PREFIX}{sid}/")]

    def load_locator(self, sid: str) -> Locator | None:
        """The newest complete locator of a snapshot, verified; None if it has none."""
        keys = newest(self.locator_keys(sid))
        if not keys:
            return None
        loc = Locator(SnapshotId(sid))
        for key in keys:

            def once(key: str = key) -> list[RawPack]:
                return decode_locator(key, self.store.get(key))

            for rec in read_twice(f"locator {key}", once):
                loc.add(rec)
        loc.generation = int(keys[0].rsplit("/", 1)[-1][:8])
        return loc

    def locator(self, snap: Snapshot | str, *, strict: bool = False) -> SnapshotWhere:
        """Where a snapshot's blobs are: its locator, or the whole index without one.
        ``strict``: a blob its locator lacks is an error, not looked up elsewhere."""
        from hometier.repo.views import SnapshotWhere

        return SnapshotWhere(self, snap if isinstance(snap, str) else snap.id, strict=strict)

    def for_snapshot(self, snap: Snapshot, *, strict: bool = False) -> SnapshotView:
        """This repository as one snapshot's readers see it: every read finds blobs
        through the snapshot's locator (loaded on first use)."""
        from hometier.repo.views import SnapshotView

        return SnapshotView(self, self.locator(snap, strict=strict))

    def pack_sizes(self) -> dict[bytes, int]:
        """Pack id -> size of every pack the whole index names."""
        return self.blobs.packs()

    def cached_locator(self, sid: str, *, fresh: bool = False) -> Locator | None:
        with self._lock:
            loc = self._locators.get(sid)
            if loc is not None and not fresh:
                self._locators.move_to_end(sid)
                return loc
        loc = self.load_locator(sid)
        if loc is None:
            return None
        with self._lock:
            self._locators[sid] = loc
            self._locators_total += len(loc) - self._locator_sizes.get(sid, 0)
            self._locator_sizes[sid] = len(loc)
            while self._locators_total > LOCATOR_CACHE and len(self._locators) > 1:
                old, _ = self._locators.popitem(last=False)
                self._locators_total -= self._locator_sizes.pop(old, 0)
        return loc

    # --- reading blobs --------------------------------------------------------------

    def locate(self, bid: BlobId, where: Where | None = None) -> Location:
        """Where a blob is: from ``where`` if given (a snapshot's locator), else from
        the whole index, syncing it once if the blob is not known yet (a long-running
        process sees what other processes wrote). ``IntegrityError``."""
        if where is not None:
            loc = where.get(bid)
            if loc is None and where.refresh():
                loc = where.get(bid)
            if loc is not None:
                return loc
        loc = self.blobs.get(bid)
        if loc is None:
            self.load_index()
            loc = self.blobs.get(bid)
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

    def _range(self, loc: Location) -> bytes:
        (stored,) = self.store.get_ranges(
            pack_key(loc.pack), [(loc.offset, loc.offset + loc.stored_len)]
        )
        return stored

    def read_blob(self, bid: BlobId, where: Where | None = None) -> bytes:
        loc = self.locate(bid, where)
        try:
            stored = self._range(loc)
        except ObjectNotFound:
            if where is None or not where.refresh():
                raise
            loc = self.locate(bid, where)  # a prune moved it: the locator was rewritten
            stored = self._range(loc)
        try:
            return self.decode_blob(bid, loc, stored)
        except IntegrityError as exc:
            return self._read_again(bid, loc, exc)

    def _read_again(self, bid: BlobId, loc: Location, exc: IntegrityError) -> bytes:
        """A blob that failed verification, fetched alone once more: a transfer can go
        wrong where the stored object is fine. A second failure is that place's own:
        then any other copy the whole index knows (a locator that names a wrong place,
        a pack damaged where a repack left the blob elsewhere too) is read instead;
        ``IntegrityError`` only if none verifies."""
        log.warning("blob %s failed verification (%s); reading it again", bid.hex()[:16], exc)
        try:
            return self.decode_blob(bid, loc, self._range(loc))
        except IntegrityError as again:
            try:
                self.load_index()  # the index as the bucket holds it now (only on this path)
            except Exception:  # noqa: BLE001 - the blob's own failure is what to report
                log.warning("index not read to look for another copy", exc_info=True)
                raise again from None
            for other in self.blobs.locations(bid):
                if other == loc:
                    continue
                try:
                    data = self.decode_blob(bid, other, self._range(other))
                except (IntegrityError, ObjectNotFound):
                    continue
                log.warning(
                    "blob %s read from its copy in pack %s instead (at %s of pack %s: %s)",
                    bid.hex()[:16],
                    other.pack.hex()[:16],
                    loc.offset,
                    loc.pack.hex()[:16],
                    again,
                )
                return data
            raise

    def load_tree(self, bid: BlobId, where: Where | None = None) -> list[Node]:
        return decode_tree(self.read_blob(bid, where))

    def for_each_blob(
        self,
        ids: Iterable[BlobId],
        fn: Callable[[BlobId, bytes], None],
        *,
        workers: int = 4,
        where: Where | None = None,
        stored: StoredFn | None = None,
    ) -> None:
        """Fetch, verify and hand every blob of ``ids`` to ``fn`` (called in worker threads).

        Each pack is fetched once, by ranges in offset order, with nearby blobs coalesced
        into one request of at most ``fetch.SEGMENT`` bytes; packs are fetched ``workers``
        at a time, and never more than ``FETCH_SLOTS`` segments at once in the whole
        process (a login storm of many restores stays bounded in memory). Each distinct
        id is passed to ``fn`` once; ``fn`` must not fetch blobs itself. A pack that is
        gone (a prune moved its blobs) makes ``where`` look again, once. The first error
        (from the store, verification or ``fn``) stops the work and is raised.

        ``stored(bid, loc, view)``, if given, is offered each blob as it is stored, before
        it is decoded: when it returns True it has taken the blob, *and its verification*
        (``decode_blob``, or ``read_blob`` again if that fails), and ``fn`` is not called
        for it. ``view`` is valid only during the call.
        """
        todo = list(dict.fromkeys(ids))
        done: set[bytes] = set()
        lock = threading.Lock()

        def run(job: tuple[bytes, list[bytes], int, int]) -> None:
            pack, members, start, end = job
            with FETCH_SLOTS:
                (data,) = self.store.get_ranges(pack_key(PackId(pack)), [(start, end)], copy=False)
                view = memoryview(data)
                for bid in members:
                    loc = self.locate(BlobId(bid), where)
                    rel = loc.offset - start
                    part = view[rel : rel + loc.stored_len]
                    if stored is None or not stored(BlobId(bid), loc, part):
                        try:
                            blob = self.decode_blob(BlobId(bid), loc, part)
                        except IntegrityError as exc:
                            blob = self._read_again(BlobId(bid), loc, exc)
                        fn(BlobId(bid), blob)
                    part.release()
                    with lock:
                        done.add(bid)
                view.release()
                del data

        try:
            run_bounded(run, plan_jobs(todo, lambda b: self.locate(b, where)), workers)
        except ObjectNotFound:
            if where is None or not where.refresh():
                raise
            log.warning("a pack moved while it was read; reading the rest again")
            rest = [b for b in todo if b not in done]
            run_bounded(run, plan_jobs(rest, lambda b: self.locate(b, where)), workers)

    # --- snapshots ----------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot, locations: LocatorBuilder | None = None) -> SnapshotId:
        """Write a snapshot document, after its locator when ``locations`` is given;
        its blobs must already be durable and indexed."""
        data = snap.to_bytes()
        sid = SnapshotId(plain_hash(data).hex())
        if locations is not None:
            self.write_locator(sid, locations.records())
            faults.point("after_locator")
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
        return self._read_snapshot_doc(key)[0]

    def _read_snapshot_doc(self, key: str) -> tuple[Snapshot, bytes]:
        """The snapshot stored at ``key`` and its document's bytes, read from the bucket
        and checked against its name."""
        sid = SnapshotId(key.rsplit("/", 1)[-1])

        def read() -> tuple[Snapshot, bytes]:
            data = self.store.get(key)
            if plain_hash(data).hex() != sid:
                raise IntegrityError(f"snapshot {sid} does not match its name")
            return Snapshot.from_bytes(data, sid), data

        return read_twice(f"snapshot {sid[:12]}", read)

    # Snapshot documents cached on local disk, for listings that ask (``cached``):
    # retention reads every document at every run (thousands of GETs a day on a big
    # hub) although none ever changes. A copy is used only for a key the bucket lists
    # right now with the same size and modification time as when it was copied, and
    # only if it hashes to its name; anything else is fetched again. A forgotten
    # snapshot's copy goes with it (or with the next full listing).

    def _snapshot_doc_path(self, sid: str) -> str:
        return os.path.join(self._cache_folder(), "snapshots", sid)

    @staticmethod
    def _doc_stamp(obj: ObjectInfo) -> bytes | None:
        if obj.modified is None:
            return None
        return b"%d %d\n" % (obj.size, int(obj.modified.timestamp() * 1_000_000))

    def _cached_snapshot(self, obj: ObjectInfo) -> Snapshot | None:
        """The local copy of the document ``obj`` lists, if it is still that document."""
        stamp = self._doc_stamp(obj)
        if stamp is None:
            return None
        sid = SnapshotId(obj.key.rsplit("/", 1)[-1])
        try:
            with open(self._snapshot_doc_path(sid), "rb") as f:
                kept = f.read()
        except OSError:
            return None
        if not kept.startswith(stamp):
            return None
        data = kept[len(stamp) :]
        if len(data) != obj.size or plain_hash(data).hex() != sid:
            return None
        return Snapshot.from_bytes(data, sid)  # the bucket's bytes: same answer as a GET

    def _fetch_snapshot_and_keep(self, obj: ObjectInfo) -> Snapshot:
        """The document ``obj`` lists, read from the bucket; a local copy is kept."""
        sid = SnapshotId(obj.key.rsplit("/", 1)[-1])
        stamp = self._doc_stamp(obj)
        path = self._snapshot_doc_path(sid)
        snap, data = self._read_snapshot_doc(obj.key)
        if stamp is not None:
            self._keep_snapshot_doc(path, stamp + data)
        return snap

    def _keep_snapshot_doc(self, path: str, content: bytes) -> None:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("snapshot document not cached at %s: %s", path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _sweep_snapshot_docs(self, listed: set[str]) -> None:
        """Drop copies of snapshots the bucket no longer lists (forgotten by another
        process): the cache stays the size of the repository's snapshots."""
        folder = os.path.join(self._cache_folder(), "snapshots")
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            if "." not in name and name not in listed:
                self._forget_snapshot_doc(name)

    def _forget_snapshot_doc(self, sid: str) -> None:
        try:
            os.unlink(self._snapshot_doc_path(sid))
        except OSError:
            pass

    def list_snapshots(
        self,
        user: str | None = None,
        workers: int = 8,
        *,
        errors: list[str] | None = None,
        cached: bool = False,
    ) -> list[Snapshot]:
        """Snapshots (of one user, or all), oldest first. A damaged snapshot raises
        ``IntegrityError`` or, when ``errors`` is given, is recorded there and left out.

        ``cached``: a document read before may come from the local cache instead of a GET
        (retention lists every snapshot at every run). Never for what checks the bucket
        (``check``, a purge's proof): only the bucket's own bytes prove it."""
        from concurrent.futures import ThreadPoolExecutor

        prefix = "snapshots/" if user is None else f"snapshots/{user_key(user)}/"
        listed = list(self.store.list(prefix))
        keys = [o.key for o in listed]
        meta = {o.key: o for o in listed} if cached else {}
        if not keys:
            return []

        def load(key: str) -> Snapshot | None:
            try:
                if key in meta:  # its local copy, if any, was tried already
                    return self._fetch_snapshot_and_keep(meta[key])
                return self._load_snapshot_key(key)
            except ObjectNotFound:
                return None  # forgotten by a prune between the listing and the read
            except IntegrityError as exc:
                if errors is None:
                    raise
                errors.append(f"{key}: {exc}")
                return None

        found: dict[str, Snapshot | None] = {}
        if cached:
            # Local copies first, in this thread: a pool's hand-offs cost more than the
            # read, hash and parse of a small file (2,300 documents: 0.19 s, not 0.30 s).
            # A copy that does not parse is read from the bucket below, like a miss.
            for key in keys:
                with contextlib.suppress(IntegrityError):
                    snap = self._cached_snapshot(meta[key])
                    if snap is not None:
                        found[key] = snap
        missing = [k for k in keys if k not in found]
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
                found.update(zip(missing, pool.map(load, missing), strict=True))
        snaps = [s for s in (found[k] for k in keys) if s is not None]
        if cached and user is None:
            self._sweep_snapshot_docs({k.rsplit("/", 1)[-1] for k in keys})
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
        if user is not None and len(ref) == 64:
            # A whole id (what the database records): its key is known, no listing
            # (which stays the answer when that key holds nothing).
            try:
                snap = self._load_snapshot_key(f"snapshots/{user_key(user)}/{ref}")
            except ObjectNotFound:
                pass
            else:
                if snap.user != user:
                    raise SnapshotNotFound(ref)
                return snap
        matches = [k for k in self.snapshot_keys(user) if k.rsplit("/", 1)[-1].startswith(ref)]
        if len(matches) != 1:
            raise SnapshotNotFound(ref if not matches else f"{ref} (ambiguous)")
        snap = self._load_snapshot_key(matches[0])
        if user is not None and snap.user != user:
            raise SnapshotNotFound(ref)
        return snap

    def delete_snapshot(self, snap: Snapshot) -> None:
        """Forget a snapshot: its document, then its locator."""
        self.store.delete(f"snapshots/{user_key(snap.user)}/{snap.id}")
        self._forget_snapshot_doc(snap.id)
        for key in self.locator_keys(snap.id):
            self.store.delete(key)
        with self._lock:
            self._locators.pop(snap.id, None)
            self._locators_total -= self._locator_sizes.pop(snap.id, 0)


_PRIVATE: list[str] = []


def _private_cache() -> str:
    """A temporary cache folder for repositories opened without ``cache_dir``."""
    if not _PRIVATE:
        path = tempfile.mkdtemp(prefix="hometier-cache-")
        _PRIVATE.append(path)
        atexit.register(shutil.rmtree, path, True)
    return _PRIVATE[0]
