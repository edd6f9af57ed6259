"""``BlobIndex``: the repository's whole index, cached on local disk, synced incrementally.

Backup deduplicates against every blob of the repository, and a repository may hold
tens of millions of them: far too many for memory (~150 bytes each in a dict). This
cache keeps them in sorted run files (``runs``) beside a small SQLite database of
metadata, in a folder of its own per repository (``c.Hometier.cache_dir``):

- ``packs``: one row per pack any index object named: a local number (what run
  records hold), the pack id, its size, its entry count and blob-area bytes, and
  whether an index object present in the bucket still names it (*alive*);
- ``objects`` / ``object_packs``: the index objects loaded, and which packs each names;
- ``runs``: the run files that hold the entries, oldest first.

``sync`` lists ``index/``, reads only the objects it has not loaded, and turns the packs
of objects that vanished (a prune rewrote them) and that no present object names into
*dead* packs, whose records are ignored and dropped at the next merge. Nothing is ever
rebuilt wholesale: a prune that rewrites some index objects costs reading the objects it
wrote. Lookups read about 3 KB per run with ``pread``; resident memory is the pack
numbers of dead and marked packs and a cache of pack ids looked up.

The cache is derived data: delete the folder and it is rebuilt from the bucket. Several
processes on one host may share a folder (SQLite plus a ``flock`` for writers);
replicas on different hosts each keep their own (see docs/architecture.md, Memory).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from hometier.errors import IntegrityError
from hometier.repo.ids import BlobId, PackId
from hometier.repo.index import Location, PackRecord, RawPack, location
from hometier.repo.pack import ENTRY, encode_entries, trailer_size
from hometier.repo.runs import REC, Run, RunBuilder, merge
from hometier.store import ObjectNotFound

log = logging.getLogger(__name__)

NO = struct.Struct("<I")
MAX_RUNS = 8
"""More runs than this are merged (lookups read every run)."""
ADD_MERGE_LIMIT = 2_000_000
"""The most records a merge started by ``add`` (a backup's upload thread) rewrites."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS packs(no INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL, blobs INTEGER NOT NULL, bytes INTEGER NOT NULL,
    alive INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects(key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS object_packs(key TEXT NOT NULL, no INTEGER NOT NULL,
    PRIMARY KEY(key, no)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS object_packs_no ON object_packs(no);
CREATE TABLE IF NOT EXISTS runs(seq INTEGER PRIMARY KEY, name TEXT NOT NULL,
    count INTEGER NOT NULL);
"""

ReadObject = Callable[[str], list[RawPack]]


def records_of(table: bytes | memoryview, no: int) -> list[bytes]:
    """Run records of a pack's packed entry table; ``IntegrityError`` for an entry of
    unknown type or compression."""
    table = bytes(table)
    if table and (max(table[32 :: ENTRY.size]) > 1 or max(table[33 :: ENTRY.size]) > 1):
        raise IntegrityError("unknown blob type or compression in the index")
    pno = NO.pack(no)
    step = ENTRY.size
    return [table[o : o + 32] + pno + table[o + 32 : o + step] for o in range(0, len(table), step)]


class BlobIndex:
    """Blob id -> locations for a whole repository; thread-safe."""

    def __init__(self, folder: str) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.folder = folder
        self._lock = threading.RLock()
        self._lockfd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._db = sqlite3.connect(
            os.path.join(folder, "meta.sqlite"),
            check_same_thread=False,
            isolation_level=None,
            timeout=600,
        )
        with self._flock():
            # A rollback journal, not WAL: closing a connection (or a process that exits
            # without closing it) then changes no file; writers are serialised anyway.
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._clean_orphans()
        self._runs: list[Run] = []
        self._retired: list[Run] = []
        self._readers = 0
        """Lookups and scans in flight: runs merged away are closed only when none is
        (any of them may still read one)."""
        self._dead: set[int] = set()
        self.marked: set[int] = set()
        """Pack numbers that a prune mark names: readable, never deduplicated against."""
        self._ids: dict[int, tuple[PackId, int]] = {}
        self._sizes: dict[bytes, int] = {}
        self._count = 0
        self._reload()

    # --- locking and the view ------------------------------------------------------

    def _flock(self) -> _FileLock:
        return _FileLock(self._lockfd)

    def _clean_orphans(self) -> None:
        """Remove run files no metadata names (a sync killed before it committed)."""
        names = {r[0] for r in self._db.execute("SELECT name FROM runs")}
        for name in os.listdir(self.folder):
            if (name.endswith(".run") or name.endswith(".tmp")) and name not in names:
                os.unlink(os.path.join(self.folder, name))

    def _reload(self) -> None:
        """Take the metadata's current view: runs, dead packs (another process may have
        synced meanwhile)."""
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM runs ORDER BY seq")]
            have = {r.path: r for r in self._runs}
            runs: list[Run] = []
            for name in names:
                path = os.path.join(self.folder, name)
                old = have.pop(path, None)
                runs.append(old if old is not None else Run(path))
            # Runs merged away may still be read by a lookup on another thread: they are
            # closed once no lookup is in flight. (Closing them one reload later was not
            # enough: with several backups in one process a lookup outlived two reloads
            # and read a closed descriptor.)
            self._retired.extend(have.values())
            self._close_retired()
            self._runs = runs
            self._dead = {r[0] for r in self._db.execute("SELECT no FROM packs WHERE alive=0")}
            self._count = sum(len(r) for r in runs)

    def close(self) -> None:
        with self._lock:
            for r in self._runs + self._retired:
                r.close()
            self._runs, self._retired = [], []
            self._db.close()
            os.close(self._lockfd)

    def __len__(self) -> int:
        """Records held (blobs, counting copies and records of dead packs not merged yet)."""
        return self._count

    # --- lookups ---------------------------------------------------------------------

    def pack(self, no: int) -> tuple[PackId, int]:
        """Pack id and size of a pack number."""
        got = self._ids.get(no)
        if got is None:
            with self._lock:
                row = self._db.execute("SELECT id, size FROM packs WHERE no=?", (no,)).fetchone()
            if row is None:
                raise IntegrityError(f"index cache names an unknown pack number {no}")
            got = self._ids[no] = (PackId(bytes(row[0])), int(row[1]))
            self._sizes[got[0]] = got[1]
        return got

    def size_of(self, pid: bytes) -> int:
        """Size of a pack met through a lookup (or -1 if unknown)."""
        size = self._sizes.get(pid)
        if size is None:
            with self._lock:
                row = self._db.execute(
                    "SELECT size FROM packs WHERE id=?", (bytes(pid),)
                ).fetchone()
            size = -1 if row is None else int(row[0])
        return size

    def pack_no(self, pid: bytes) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT no FROM packs WHERE id=?", (bytes(pid),)).fetchone()
        return None if row is None else int(row[0])

    def pack_alive(self, pid: bytes) -> bool:
        """True if an index object present at the last sync names the pack."""
        with self._lock:
            row = self._db.execute("SELECT alive FROM packs WHERE id=?", (bytes(pid),)).fetchone()
        return row is not None and bool(row[0])

    def usable_pack(self, pid: bytes) -> int | None:
        """The size of a pack a new snapshot may reference: named by an index object
        present at the last sync and not marked for deletion; None otherwise."""
        with self._lock:
            row = self._db.execute(
                "SELECT no, size, alive FROM packs WHERE id=?", (bytes(pid),)
            ).fetchone()
        if row is None or not row[2] or int(row[0]) in self.marked:
            return None
        return int(row[1])

    def _location(self, rec: bytes) -> Location:
        bid, no, typ, comp, off, stored, raw_len = REC.unpack(rec)
        pid, _size = self.pack(no)
        return location(pid, off, stored, raw_len, typ, comp)

    def _close_retired(self) -> None:
        """Close the runs merged away if no lookup is in flight (under the lock)."""
        if self._readers == 0:
            for r in self._retired:
                r.close()
            self._retired = []

    def _reading(self) -> tuple[list[Run], set[int]]:
        with self._lock:
            self._readers += 1
            return list(self._runs), self._dead

    def _done_reading(self) -> None:
        with self._lock:
            self._readers -= 1
            self._close_retired()

    def _records(self, bid: bytes) -> Iterator[bytes]:
        runs, dead = self._reading()
        try:
            for run in reversed(runs):
                for rec in run.find(bid):
                    if NO.unpack_from(rec, 32)[0] not in dead:
                        yield rec
        finally:
            self._done_reading()

    def get(self, bid: BlobId, *, unmarked: bool = False) -> Location | None:
        """Where a blob is: a location in a pack that no mark names if there is one,
        else (unless ``unmarked``) one in a marked pack; None if it is not indexed."""
        fallback = None
        for rec in self._records(bid):
            if NO.unpack_from(rec, 32)[0] in self.marked:
                fallback = fallback or rec
                continue
            return self._location(rec)
        if fallback is None or unmarked:
            return None
        return self._location(fallback)

    def known(self, bid: BlobId) -> bool:
        """Indexed in a pack no mark names: what a writer may deduplicate against."""
        return self.get(bid, unmarked=True) is not None

    def locate_except(self, bid: BlobId, exclude: set[bytes]) -> Location | None:
        """A location in a pack not in ``exclude``, preferably an unmarked one."""
        best = None
        for rec in self._records(bid):
            loc = self._location(rec)
            if loc.pack in exclude:
                continue
            if NO.unpack_from(rec, 32)[0] not in self.marked:
                return loc
            best = best or loc
        return best

    def locations(self, bid: BlobId) -> list[Location]:
        """Every indexed copy of a blob (marked packs included)."""
        return [self._location(rec) for rec in self._records(bid)]

    def __contains__(self, bid: object) -> bool:
        return isinstance(bid, bytes) and next(self._records(bid), None) is not None

    def packs(self) -> dict[bytes, int]:
        """Pack id -> size of every alive pack."""
        with self._lock:
            rows = self._db.execute("SELECT id, size FROM packs WHERE alive=1").fetchall()
        return {bytes(r[0]): int(r[1]) for r in rows}

    def pack_table(self) -> Iterator[tuple[int, PackId, int, int, int]]:
        """(number, id, size, entries, blob-area bytes) of every alive pack."""
        with self._lock:
            rows = self._db.execute(
                "SELECT no, id, size, blobs, bytes FROM packs WHERE alive=1"
            ).fetchall()
        for no, pid, size, blobs, nbytes in rows:
            yield int(no), PackId(bytes(pid)), int(size), int(blobs), int(nbytes)

    def objects(self) -> dict[str, list[int]]:
        """Index object key -> the pack numbers it names, for every loaded object."""
        out: dict[str, list[int]] = {}
        with self._lock:
            for key in self._db.execute("SELECT key FROM objects"):
                out[key[0]] = []
            for key, no in self._db.execute("SELECT key, no FROM object_packs"):
                out.setdefault(key, []).append(int(no))
        return out

    def scan(self) -> Iterator[tuple[bytes, int, int]]:
        """(blob id, pack number, stored_len) of every record of an alive pack, in blob
        id order (copies of one blob are adjacent). For prune: bounded memory."""
        import heapq

        runs, dead = self._reading()
        try:
            for rec in heapq.merge(*runs):
                bid, no, _t, _c, _off, stored, _raw = REC.unpack(rec)
                if no not in dead:
                    yield bid, no, stored
        finally:
            self._done_reading()

    def set_marked(self, pack_ids: Iterable[bytes]) -> None:
        marked = set()
        for pid in pack_ids:
            no = self.pack_no(pid)
            if no is not None:
                marked.add(no)
        self.marked = marked

    # --- writing -----------------------------------------------------------------------

    def _pack_row(self, rec: RawPack) -> tuple[int, bool]:
        """The pack's number, and whether its entries must be added (new or dead)."""
        row = self._db.execute(
            "SELECT no, alive FROM packs WHERE id=?", (bytes(rec.id),)
        ).fetchone()
        nbytes = max(0, rec.size - trailer_size(rec.count))
        if row is None:
            cur = self._db.execute(
                "INSERT INTO packs(id, size, blobs, bytes, alive) VALUES (?,?,?,?,1)",
                (bytes(rec.id), rec.size, rec.count, nbytes),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid), True
        no, alive = int(row[0]), bool(row[1])
        if not alive:
            self._db.execute("UPDATE packs SET alive=1 WHERE no=?", (no,))
        return no, not alive

    def _take(self, key: str, packs: Iterable[RawPack], builder: RunBuilder) -> None:
        for rec in packs:
            no, fresh = self._pack_row(rec)
            if fresh:
                builder.extend(records_of(rec.table, no))
            self._db.execute("INSERT OR IGNORE INTO object_packs VALUES (?,?)", (key, no))
        self._db.execute("INSERT OR IGNORE INTO objects VALUES (?)", (key,))

    def _commit_run(self, builder: RunBuilder) -> None:
        if not builder.count:
            return
        seq = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM runs").fetchone()[0]
        name = f"{seq:08d}-{secrets.token_hex(4)}.run"
        count = builder.finish(os.path.join(self.folder, name))
        self._db.execute("INSERT INTO runs VALUES (?,?,?)", (seq, name, count))

    def add(self, key: str, packs: list[PackRecord]) -> None:
        """Record an index object this process wrote (so its blobs are known at once)."""
        self.add_raw(
            key, [RawPack(p.id, p.size, encode_entries(p.entries), len(p.entries)) for p in packs]
        )

    def add_raw(self, key: str, raw: list[RawPack]) -> None:
        """``add`` for records whose entry tables are still packed."""
        with self._lock, self._flock(), RunBuilder(self.folder) as builder:
            if self._db.execute("SELECT 1 FROM objects WHERE key=?", (key,)).fetchone():
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._take(key, raw, builder)
                self._commit_run(builder)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._reload()
            # A long backup adds a run per index object: keep lookups to a few runs.
            self._merge_if_needed(limit=ADD_MERGE_LIMIT)

    def sync(
        self,
        present: dict[str, int],
        read: ReadObject,
        *,
        workers: int = 8,
        errors: list[str] | None = None,
    ) -> int:
        """Load the index objects of ``present`` (key -> stored size) not loaded yet, and
        forget the packs of loaded objects that are no longer present (unless a present
        object names them). ``read(key)`` fetches and verifies one object. Returns how
        many were read."""
        with self._lock, self._flock(), RunBuilder(self.folder) as builder:
            loaded = {r[0] for r in self._db.execute("SELECT key FROM objects")}
            new = sorted(present.keys() - loaded)
            gone = loaded - present.keys()
            if not new and not gone:
                self._reload()
                self._merge_if_needed()
                return 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, packs in _fetch(new, present, read, workers, errors):
                    if packs is not None:
                        self._take(key, packs, builder)
                for key in gone:
                    self._db.execute("DELETE FROM objects WHERE key=?", (key,))
                    self._db.execute("DELETE FROM object_packs WHERE key=?", (key,))
                if gone:
                    self._db.execute(
                        "UPDATE packs SET alive=0 WHERE alive=1 AND no NOT IN "
                        "(SELECT no FROM object_packs)"
                    )
                self._commit_run(builder)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._reload()
            self._merge_if_needed()
            return len(new)

    def _merge_if_needed(self, limit: int | None = None) -> None:
        """Size-tiered merging: the newest run is merged with the one before while it is
        at least half its size, or while there are more than ``MAX_RUNS``; so a record
        is rewritten about log2(total / new) times and lookups read few runs. With
        ``limit``, no merge writes more records than that (``add`` runs on an upload
        thread: the big merges wait for the next ``sync``)."""
        while len(self._runs) >= 2:
            runs = self._runs
            if not (len(runs) > MAX_RUNS or len(runs[-1]) * 2 >= len(runs[-2])):
                return
            take = runs[-2:]
            if limit is not None and len(take[0]) + len(take[1]) > limit:
                return
            self._merge(take)

    def _merge(self, take: list[Run]) -> None:
        names = [os.path.basename(r.path) for r in take]
        seqs = [
            r[0]
            for r in self._db.execute(
                f"SELECT seq FROM runs WHERE name IN ({','.join('?' * len(names))})", names
            )
        ]
        seq = max(seqs)
        name = f"{seq:08d}-{secrets.token_hex(4)}.run"
        count = merge(os.path.join(self.folder, name), take, self._dead)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(f"DELETE FROM runs WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        self._db.execute("INSERT INTO runs VALUES (?,?,?)", (seq, name, count))
        self._db.execute("COMMIT")
        for n in names:
            os.unlink(os.path.join(self.folder, n))
        self._reload()


WINDOW_BYTES = 24 * 1024 * 1024
"""Stored bytes of index objects fetched at once by a sync (each decodes to about as much)."""


def _fetch(
    keys: list[str],
    sizes: dict[str, int],
    read: ReadObject,
    workers: int,
    errors: list[str] | None,
) -> Iterator[tuple[str, list[RawPack] | None]]:
    """Read objects in order, up to ``workers`` at a time and ``WINDOW_BYTES`` in all (one
    at least): a first sync of a big repository stays small in memory."""
    if not keys:
        return

    def one(key: str) -> tuple[str, list[RawPack] | None]:
        try:
            return key, read(key)
        except ObjectNotFound:
            return key, None  # deleted by a prune since the listing: not present
        except IntegrityError as exc:
            if errors is None:
                raise
            errors.append(f"{key}: {exc}")
            return key, None  # not recorded: read again next time

    workers = max(1, min(workers, len(keys)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: list[str] = []
        size = 0
        for key in keys:
            if window and (len(window) >= workers or size + sizes.get(key, 0) > WINDOW_BYTES):
                yield from pool.map(one, window)
                window, size = [], 0
            window.append(key)
            size += sizes.get(key, 0)
        yield from pool.map(one, window)


class _FileLock:
    """An exclusive ``flock`` on the cache folder: one writer at a time across processes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
