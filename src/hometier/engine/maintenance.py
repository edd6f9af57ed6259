"""Repairs and upgrades that rewrite metadata, never packs.

- ``repair_index``: rebuild the index from the pack trailers alone (the bucket is the
  source of truth): the way back for a repository whose index objects are lost,
  damaged or too large to read.
- ``repair_locators``: write a locator for every snapshot that lacks a readable one.
- ``upgrade``: turn a version 1 repository into version 2 in place (locators for every
  snapshot, then the config's version).

Each holds the prune lock (so no prune deletes what it is about to name), may run while
archives run (they never delete), and is resumable: killed at any point, running it
again finishes the work.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier import faults
from hometier.engine.prune import lock, unlock
from hometier.engine.trees import TreeCache
from hometier.errors import Error, IntegrityError
from hometier.repo import BlobId, PackId, Repository
from hometier.repo.config import CONFIG_KEY, VERSION
from hometier.repo.ids import pack_key, parse_pack_key
from hometier.repo.index import INDEX_TARGET, RawPack, record_size
from hometier.repo.locator import LocatorBuilder, newest
from hometier.repo.pack import FOOTER, trailer_table
from hometier.repo.snapshot import Snapshot

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class RepairReport:
    packs: int = 0
    entries: int = 0
    index_objects_written: int = 0
    index_objects_deleted: int = 0
    snapshots: int = 0
    locators_written: int = 0
    upgraded_from: int | None = None
    problems: list[str] = field(default_factory=list)


def _trailers(
    repo: Repository, packs: list[tuple[PackId, int]], workers: int
) -> Iterator[tuple[PackId, int, tuple[bytes, int] | Error]]:
    """Each pack's entry table from its trailer, ``workers`` packs at a time."""

    def one(item: tuple[PackId, int]) -> tuple[PackId, int, tuple[bytes, int] | Error]:
        pid, size = item
        key = pack_key(pid)
        try:
            if size < FOOTER.size:
                raise IntegrityError(f"pack {pid.hex()[:16]} is too short to hold a trailer")
            (foot,) = repo.store.get_ranges(key, [(size - FOOTER.size, size)])
            tlen, _magic = FOOTER.unpack(foot)
            (tail,) = repo.store.get_ranges(key, [(max(0, size - FOOTER.size - tlen), size)])
            return pid, size, trailer_table(tail, size)
        except Error as exc:
            return pid, size, exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(packs), workers * 4):
            yield from pool.map(one, packs[start : start + workers * 4])


def repair_index(
    repo: Repository,
    *,
    now: dt.datetime,
    workers: int = 8,
    progress: Progress | None = None,
) -> RepairReport:
    """Rebuild the index from every pack's trailer, then delete the index objects that
    were there before (listed first, so an object a backup writes meanwhile stays).

    A pack whose trailer is damaged is reported and left unindexed (``check`` then names
    the snapshots that need it). Memory: one index object being assembled.
    """
    report = RepairReport()
    lock(repo, now)
    try:
        before = [o.key for o in repo.store.list("index/")]
        packs = []
        for obj in repo.store.list("packs/"):
            pid = parse_pack_key(obj.key)
            if pid is not None:
                packs.append((pid, obj.size))
        written: list[str] = []
        group: list[RawPack] = []
        size = 0
        for i, (pid, psize, got) in enumerate(_trailers(repo, packs, workers), 1):
            if isinstance(got, Error):
                report.problems.append(f"pack {pid.hex()[:16]}: {got}")
            else:
                table, count = got
                group.append(RawPack(pid, psize, table, count))
                report.packs += 1
                report.entries += count
                size += record_size(count)
                if size >= INDEX_TARGET:
                    written += repo.write_index_raw(group)
                    group, size = [], 0
            if progress:
                progress("packs", i, len(packs))
        if group:
            written += repo.write_index_raw(group)
        report.index_objects_written = len(written)
        if set(before) - set(written):
            repo.bump_epoch("repair index")  # before the first object goes
        for key in before:
            if key not in written:
                repo.store.delete(key)
                report.index_objects_deleted += 1
        repo.load_index(workers=workers)
    finally:
        unlock(repo)
    log.info(
        "repair index: %d packs, %d entries, %d objects written, %d deleted",
        report.packs,
        report.entries,
        report.index_objects_written,
        report.index_objects_deleted,
    )
    return report


def _locate_all(repo: Repository, snap: Snapshot, workers: int) -> LocatorBuilder:
    """The location of every blob a snapshot reaches, from the whole index."""
    trees = TreeCache(repo, [snap.tree], workers=workers)
    out = LocatorBuilder()
    missing = 0
    for tid in trees.ids():
        for bid in [tid, *(b for n in trees.nodes(tid) for b in n.content)]:
            if bid in out:
                continue
            loc = repo.blobs.get(BlobId(bid))
            if loc is None:
                missing += 1
                continue
            out.note_location(BlobId(bid), loc, repo.blobs.size_of(loc.pack))
    if missing:
        raise IntegrityError(
            f"snapshot {snap.id[:12]} references {missing} blob(s) not in the index"
        )
    return out


def _has_locator(repo: Repository, sid: str, keys: list[str]) -> int | None:
    """The newest readable generation, or None."""
    if not newest(keys):
        return None
    try:
        loc = repo.load_locator(sid)
    except Error:
        return None
    return None if loc is None else loc.generation


def repair_locators(
    repo: Repository,
    *,
    now: dt.datetime,
    workers: int = 4,
    progress: Progress | None = None,
    locked: bool = False,
) -> RepairReport:
    """Write a locator for every snapshot without a complete, readable one (the next
    generation after whatever is there); snapshots that have one are skipped, so a run
    that was killed resumes where it stopped. Problems (a snapshot whose blobs are not
    all indexed) are reported, and that snapshot keeps reading the whole index."""
    report = RepairReport()
    if not locked:
        lock(repo, now)
    try:
        repo.load_index(workers=workers)
        keys: dict[str, list[str]] = {}
        for obj in repo.store.list("locators/"):
            keys.setdefault(obj.key.split("/")[1], []).append(obj.key)
        snaps = repo.list_snapshots()
        report.snapshots = len(snaps)
        for i, snap in enumerate(snaps, 1):
            mine = keys.get(snap.id, [])
            if _has_locator(repo, snap.id, mine) is None:
                try:
                    built = _locate_all(repo, snap, workers)
                except Error as exc:
                    report.problems.append(f"snapshot {snap.id[:12]} ({snap.user}): {exc}")
                    continue
                gens = [
                    int(k.rsplit("/", 1)[-1][:8])
                    for k in mine
                    if k.rsplit("/", 1)[-1][:8].isdigit()
                ]
                gen = max(gens, default=-1) + 1
                repo.write_locator(snap.id, built.records(), gen)
                for key in mine:
                    repo.store.delete(key)  # damaged or incomplete generations
                report.locators_written += 1
                faults.point("after_upgrade_locator")
            if progress:
                progress("snapshots", i, len(snaps))
    finally:
        if not locked:
            unlock(repo)
    return report


def upgrade(
    repo: Repository, *, now: dt.datetime, workers: int = 4, progress: Progress | None = None
) -> RepairReport:
    """Upgrade a repository to the newest format version in place (never rewriting
    packs): a locator for every snapshot, then the config's version — only when every
    snapshot has one, so that readers of the new version find what it promises."""
    lock(repo, now)
    try:
        report = repair_locators(repo, now=now, workers=workers, progress=progress, locked=True)
        if repo.config.version < VERSION and not report.problems:
            report.upgraded_from = repo.config.version
            new = dataclasses.replace(repo.config, version=VERSION)
            # The one rewrite of `config` the format allows (docs/format.md, Version history).
            repo.store.put(CONFIG_KEY, new.to_bytes())
            repo.config = new
        return report
    finally:
        unlock(repo)
