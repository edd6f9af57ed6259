"""What prune writes besides marks: repacked packs, new locator generations, index
objects without the deleted packs. Each keeps memory to one pack, one locator or one
index object (plus one object being assembled, at most ``index.INDEX_TARGET``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator

from hometier.engine.usage import UsedSet
from hometier.errors import Error
from hometier.repo import BlobId, PackId, Repository
from hometier.repo.index import INDEX_TARGET, Location, PackRecord, RawPack, record_size
from hometier.repo.locator import PREFIX as LOCATOR_PREFIX
from hometier.repo.locator import LocatorBuilder, decode_locator, newest, parse_key
from hometier.store import ObjectInfo

log = logging.getLogger(__name__)


class _InPack:
    """``Where`` for blobs of one pack, from its trailer."""

    def __init__(self, pid: PackId, where: dict[bytes, Location]) -> None:
        self.pid = pid
        self.where = where

    def get(self, bid: BlobId) -> Location | None:
        return self.where.get(bid)

    def refresh(self) -> bool:
        return False


def repack(
    repo: Repository, packs: list[tuple[PackId, int]], used: UsedSet, *, workers: int = 4
) -> tuple[int, list[PackId]]:
    """Copy the used blobs of ``packs`` into new packs (indexed when this returns).

    A blob that already has a copy in another pack that is not being repacked and not
    marked is not copied again. Returns (stored bytes of the blobs read, the packs
    whose used blobs all have a copy now); a pack that cannot be read whole (damaged)
    is left out and stays as it is.
    """
    done: list[PackId] = []
    copied = 0
    leaving: set[bytes] = {p for p, _ in packs}
    lock = threading.Lock()
    with repo.writer(locate=False) as writer:
        for pid, size in packs:
            try:
                entries = repo.read_trailer(pid, size)
            except Error as exc:
                log.warning("not repacking pack %s: %s", pid.hex()[:16], exc)
                continue
            where: dict[bytes, Location] = {}
            for e in entries:
                if e.id not in used:
                    continue
                other = repo.blobs.locate_except(e.id, leaving)
                if other is not None and repo.blobs.pack_no(other.pack) not in repo.blobs.marked:
                    continue
                where[e.id] = Location(pid, e.offset, e.stored_len, e.raw_len, e.type, e.comp)
            nbytes = [0]

            def copy(
                bid: BlobId,
                data: bytes,
                where: dict[bytes, Location] = where,
                nbytes: list[int] = nbytes,
            ) -> None:
                writer.add(where[bid].type, data, bid, force=True)
                with lock:
                    nbytes[0] += where[bid].stored_len

            try:
                ids = [BlobId(b) for b in where]
                repo.for_each_blob(ids, copy, workers=workers, where=_InPack(pid, where))
            except Error as exc:
                log.warning("not repacking pack %s: %s", pid.hex()[:16], exc)
                continue
            copied += nbytes[0]
            done.append(pid)
        writer.flush()
    return copied, done


def _by_snapshot(repo: Repository) -> dict[str, list[ObjectInfo]]:
    out: dict[str, list[ObjectInfo]] = {}
    for obj in repo.store.list(LOCATOR_PREFIX):
        parsed = parse_key(obj.key)
        if parsed is not None:
            out.setdefault(parsed[0], []).append(obj)
    return out


def rewrite_locators(
    repo: Repository, alive: set[str], delete: set[bytes], *, now: dt.datetime, grace: dt.timedelta
) -> int:
    """Write the next generation of every locator that names a pack of ``delete``,
    with other copies of those blobs, then remove older generations; remove locators
    of snapshots that are gone once they are older than ``grace`` (a backup writes its
    locator just before its snapshot). Returns how many locators were rewritten."""
    rewritten = 0
    for sid, objs in sorted(_by_snapshot(repo).items()):
        keys = [o.key for o in objs]
        if sid not in alive:
            if all(o.modified is not None and now - o.modified >= grace for o in objs):
                for key in keys:
                    repo.store.delete(key)
            continue
        current = newest(keys)
        if not current:
            continue
        stale = [k for k in keys if k not in current]
        try:
            records = [r for key in current for r in decode_locator(key, repo.store.get(key))]
        except Error as exc:
            # A damaged locator: readers fall back to the index; `repair locators` fixes it.
            log.warning("locator of snapshot %s unreadable: %s", sid[:12], exc)
            continue
        if any(r.id in delete for r in records):
            gen = int(current[0].rsplit("/", 1)[-1][:8]) + 1
            repo.write_locator(sid, list(_moved(repo, records, delete)), gen)
            rewritten += 1
            stale += current
        for key in stale:
            repo.store.delete(key)
    return rewritten


def _moved(repo: Repository, records: list[RawPack], delete: set[bytes]) -> Iterator[PackRecord]:
    """Pack records of a locator with every entry of a deleted pack moved to another
    copy (dropped if there is none: no snapshot uses it, or prune would have kept it)."""
    from hometier.repo.pack import Entry, decode_entries

    out = LocatorBuilder()
    for r in records:
        for e in decode_entries(r.table, r.count):
            if r.id not in delete:
                out.note(r.id, r.size, e)
                continue
            loc = repo.blobs.locate_except(e.id, delete)
            if loc is not None:
                entry = Entry(e.id, loc.type, loc.comp, loc.offset, loc.stored_len, loc.raw_len)
                out.note(loc.pack, repo.blobs.size_of(loc.pack), entry)
    yield from out.records()


def rewrite_index(repo: Repository, delete: set[int], keep: set[int]) -> tuple[int, int]:
    """Replace every index object that names a pack numbered in ``delete`` by objects
    naming only its other packs, then delete the replaced ones. Returns (written,
    deleted)."""
    affected = sorted(k for k, nos in repo.blobs.objects().items() if any(n in delete for n in nos))
    if not affected:
        return 0, 0
    written: list[str] = []
    group: list[RawPack] = []
    size = 0
    for key in affected:
        for rec in repo.read_index_object(key):
            no = repo.blobs.pack_no(rec.id)
            if no is None or no not in keep:
                continue
            group.append(rec)
            size += record_size(rec.count)
            if size >= INDEX_TARGET:
                written += repo.write_index_raw(group)
                group, size = [], 0
    if group:
        written += repo.write_index_raw(group)
    deleted = 0
    for key in affected:
        if key not in written:  # byte-identical to what was written: that is the new one
            repo.store.delete(key)
            deleted += 1
    return len(written), deleted
