"""``forget`` old snapshots and ``prune`` the data nothing references any more.

Prune works in two phases so that it never deletes a blob a snapshot or an archive in
progress needs (kopia's and restic's rules, adapted):

1. *Mark*: packs none of whose blobs any snapshot references are listed in a mark
   object ``prune/<time>-<id>``; so are partly used packs that were just *repacked*
   (their used blobs copied into new, indexed packs) because they wasted more than
   ``repack_waste`` of their bytes. From then on every writer that loads the index
   treats their blobs as absent (``Repository.known``).
2. *Sweep*, on a later run, once the mark is older than ``grace`` (longer than the
   longest archive) and no archive that began before the mark is still running (the
   caller says, from the state database): a marked pack is deleted if every blob a
   snapshot uses in it has a copy in an unmarked pack; otherwise it is kept. Before
   deleting, every locator that names such a pack is written again (next generation)
   with the other copies, and every index object that names one is replaced by objects
   that do not (split within the format's bound).

Packs that no index names (left by a backup that crashed before writing its index) are
deleted once they are older than ``grace``. Only one prune runs at a time
(``locks/prune``). Memory stays bounded: the used blobs and the index are read from
local disk in blob id order (``usage``), one snapshot's trees, one locator, one pack and
one index object at a time. What each snapshot reaches is cached on local disk
(``usedcache``), so a prune reads the trees of new snapshots only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hometier.engine.rewrite import repack, rewrite_index, rewrite_locators
from hometier.engine.usage import pack_usage, used_blobs
from hometier.engine.usedcache import summary_cache
from hometier.errors import Conflict
from hometier.repo import PackId, Repository
from hometier.repo.ids import pack_key, parse_pack_key
from hometier.repo.pack import ENTRY
from hometier.repo.repository import PRUNE_PREFIX
from hometier.repo.snapshot import Snapshot
from hometier.store import ObjectExists, ObjectNotFound

log = logging.getLogger(__name__)

LOCK_KEY = "locks/prune"
LOCK_STALE = dt.timedelta(hours=6)
MARK_SLACK = dt.timedelta(minutes=5)
"""An archive counts as begun after a mark only this long after it: covers the moment
between taking the mark's time and the mark being durable, and clocks of replicas that
disagree a little (``archives_since`` comes from their rows)."""
REPACK_MAX = 4 * 1024 * 1024 * 1024
"""The most pack bytes one prune repacks (the rest waits for the next run)."""


class PruneBusy(Conflict):
    """Another prune holds {} since {}; try later (or remove it if that process is gone)."""


@dataclass
class PruneReport:
    snapshots: int = 0
    packs: int = 0
    packs_marked: int = 0
    bytes_marked: int = 0
    packs_rescued: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    orphans_deleted: int = 0
    marks_swept: int = 0
    marks_waiting: int = 0
    index_rewritten: bool = False
    partly_used_bytes: int = 0
    """Bytes of unreferenced blobs inside packs that are still partly used (kept)."""
    packs_repacked: int = 0
    bytes_repacked: int = 0
    """Bytes of used blobs copied out of wasteful packs into new ones."""
    index_objects_written: int = 0
    index_objects_deleted: int = 0
    locators_rewritten: int = 0
    snapshots_walked: int = 0
    """Snapshots whose trees were read (the others' used blobs came from the local
    summary cache, ``usedcache``)."""
    trees_read: int = 0
    summaries_refused: int = 0
    """Cached summaries that did not verify and were computed again."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Mark:
    key: str
    time: dt.datetime
    packs: set[bytes]


def select_forget(
    snaps: Sequence[Snapshot],
    now: dt.datetime,
    *,
    keep_last: int = 0,
    keep_within: dt.timedelta | None = None,
) -> tuple[list[Snapshot], list[Snapshot]]:
    """Split one user's snapshots into (keep, forget); pure.

    Keeps the newest ``keep_last``, every snapshot younger than ``keep_within``, and
    always the newest complete snapshot (an archived home is restored from it).
    """
    ordered = sorted(snaps, key=lambda s: s.time_ns, reverse=True)
    keep_ids: set[str] = {s.id for s in ordered[: max(keep_last, 0)]}
    if keep_within is not None:
        keep_ids |= {s.id for s in ordered if now - s.time <= keep_within}
    complete = [s for s in ordered if s.stats.complete]
    if complete:
        keep_ids.add(complete[0].id)
    elif ordered:
        keep_ids.add(ordered[0].id)
    keep = [s for s in ordered if s.id in keep_ids]
    forget = [s for s in ordered if s.id not in keep_ids]
    return keep, forget


def forget(repo: Repository, snaps: Sequence[Snapshot]) -> None:
    """Delete snapshot documents and their locators (their data goes at the next prunes)."""
    for s in snaps:
        repo.delete_snapshot(s)
        log.info("forgot snapshot %s of %s", s.id[:12], s.user)


def _holder_gone(doc: dict[str, object]) -> bool:
    """The lock was taken on this host by a process that no longer exists."""
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lock(repo: Repository, now: dt.datetime) -> None:
    """Take ``locks/prune``; ``PruneBusy`` if a live holder has it (a holder older than
    ``LOCK_STALE``, or a dead process of this host, has not)."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "time": now.isoformat()}
    try:
        repo.store.put(LOCK_KEY, json.dumps(holder).encode(), if_absent=True)
        return
    except ObjectExists:
        pass
    try:
        doc = json.loads(repo.store.get(LOCK_KEY))
        since = dt.datetime.fromisoformat(doc["time"])
        gone = _holder_gone(doc)
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        since, gone = now - LOCK_STALE - dt.timedelta(seconds=1), True
    if now - since <= LOCK_STALE and not gone:
        raise PruneBusy(LOCK_KEY, since.isoformat())
    log.warning("taking over a prune lock left since %s", since)
    repo.store.delete(LOCK_KEY)
    repo.store.put(LOCK_KEY, json.dumps(holder).encode(), if_absent=True)


def unlock(repo: Repository) -> None:
    """Remove the lock if it is still ours (another prune may have taken over a stale one)."""
    try:
        doc = json.loads(repo.store.get(LOCK_KEY))
    except (ObjectNotFound, ValueError):
        return
    if doc.get("host") == socket.gethostname() and doc.get("pid") == os.getpid():
        repo.store.delete(LOCK_KEY)


def _marks(repo: Repository) -> list[Mark]:
    out = []
    for obj in repo.store.list(PRUNE_PREFIX):
        try:
            doc = json.loads(repo.store.get(obj.key))
            out.append(
                Mark(
                    obj.key,
                    dt.datetime.fromisoformat(doc["time"]),
                    {bytes.fromhex(p) for p in doc["packs"]},
                )
            )
        except (ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable prune mark %s: %s", obj.key, exc)
    return out


def prune(
    repo: Repository,
    *,
    now: dt.datetime,
    grace: dt.timedelta = dt.timedelta(days=1),
    archives_since: dt.datetime | None = None,
    dry_run: bool = False,
    workers: int = 4,
    repack_waste: float | None = None,
    repack_max: int = REPACK_MAX,
    summaries: bool = True,
) -> PruneReport:
    """Mark unreferenced packs (and repack wasteful ones), sweep marks older than
    ``grace``; see the module doc.

    ``archives_since``: when the oldest archive still in progress began (None: none is
    running). A mark is swept only if it is older than ``grace`` and than that time.
    ``repack_waste``: repack a partly used pack whose unused bytes are at least this
    fraction of its size (None: never), at most ``repack_max`` pack bytes per run.
    ``dry_run`` reports what would happen and changes nothing. ``summaries``: use (and
    fill) the local cache of what each snapshot reaches (``usedcache``; False walks
    every snapshot's trees). Raises ``PruneBusy``.
    """
    report = PruneReport()
    started = time.monotonic()
    if not dry_run:
        lock(repo, now)
    try:
        repo.load_index(workers=workers)
        blobs = repo.blobs
        table = {no: (pid, size, n, nbytes) for no, pid, size, n, nbytes in blobs.pack_table()}
        by_id: dict[bytes, int] = {pid: no for no, (pid, *_rest) in table.items()}
        report.packs = len(table)
        marks = _marks(repo)
        marked_now: set[bytes] = set().union(*(m.packs for m in marks)) if marks else set()
        marked_no = {by_id[p] for p in marked_now if p in by_id}
        # Read the snapshots only now: a snapshot written after the marks were read is
        # still seen, and one written after this point was written by an archive that
        # loaded the marks (or that began before them, which ``archives_since`` covers).
        # Only the keys: a snapshot summarised at an earlier prune is not read again.
        listed_at = time.time()
        keys = repo.snapshot_keys()
        cache = summary_cache(repo) if summaries else None
        used, walked = used_blobs(repo, keys, blobs.folder, workers=workers, cache=cache)
        sids = {k.rsplit("/", 1)[-1] for k in keys}
        report.snapshots = walked.snapshots
        report.snapshots_walked, report.trees_read = walked.walked, walked.trees
        report.summaries_refused = walked.refused
        if cache is not None and not dry_run:
            cache.keep_only(sids, listed_at=listed_at)
        try:
            usage = pack_usage(repo, used, marked_no)

            # Phase 2: sweep old marks.
            delete: set[bytes] = set()
            swept: list[Mark] = []
            for m in marks:
                ripe = now - m.time >= grace and (
                    archives_since is None or archives_since > m.time + MARK_SLACK
                )
                if not ripe:
                    report.marks_waiting += 1
                    continue
                swept.append(m)
                for pid in m.packs:
                    no = by_id.get(pid)
                    if no is not None and usage.unsafe.get(no, 0):
                        report.packs_rescued += 1
                    else:
                        delete.add(pid)

            # Phase 1: mark packs nothing uses, and repack wasteful ones.
            fresh: list[bytes] = []
            wasteful: list[tuple[float, int]] = []
            for no, (pid, size, n, nbytes) in table.items():
                if pid in marked_now:
                    continue
                n_used = usage.used.get(no, 0)
                if not n_used:
                    fresh.append(pid)
                    report.bytes_marked += size
                    continue
                unused = max(0, nbytes - usage.used_bytes.get(no, 0))
                report.partly_used_bytes += unused
                # What repacking saves: the unused blobs and their trailer entries.
                waste = unused + max(0, n - n_used) * ENTRY.size
                if repack_waste is not None and size and waste / size >= repack_waste:
                    wasteful.append((waste / size, no))
            report.packs_marked = len(fresh)

            orphans: list[str] = []
            for obj in repo.store.list("packs/"):
                parsed = parse_pack_key(obj.key)
                if parsed is None or parsed in by_id:
                    continue
                if obj.modified is not None and now - obj.modified >= grace:
                    orphans.append(obj.key)

            report.packs_deleted = len(delete)
            report.bytes_deleted = sum(int(table[by_id[p]][1]) for p in delete if p in by_id)
            report.orphans_deleted = len(orphans)
            report.marks_swept = len(swept)
            chosen: list[tuple[PackId, int]] = []
            budget = repack_max
            for _w, no in sorted(wasteful, reverse=True):
                pid, size = table[no][0], table[no][1]
                if size <= budget:
                    chosen.append((pid, size))
                    budget -= size
            if dry_run:
                report.packs_repacked = len(chosen)
                return report

            if chosen:
                report.bytes_repacked, done = repack(repo, chosen, used, workers=workers)
                report.packs_repacked = len(done)
                fresh.extend(done)
            if fresh:
                # The mark's time is when it becomes visible, not when this prune began:
                # an archive that started in between loaded the index without the mark,
                # so it must count as older than the mark (``archives_since``).
                visible = now + dt.timedelta(seconds=time.monotonic() - started)
                doc = {"time": visible.isoformat(), "packs": sorted(p.hex() for p in fresh)}
                key = f"{PRUNE_PREFIX}{visible.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
                repo.store.put(key, json.dumps(doc, indent=1).encode(), if_absent=True)
        finally:
            used.close()

        if delete or orphans:
            # Before anything goes: a backup that reuses its listing of ``index/`` checks
            # the epoch after reading the marks (``Repository.load_index_for_backup``).
            repo.bump_epoch("prune")
        if delete:
            # Locators first (they must not name a pack once it is gone), then the index
            # objects (new ones before the old go), and only then the packs: a reader
            # never finds an entry whose pack is gone without also finding that its
            # locator or index objects changed (and reading them again).
            keep = set(table) - {by_id[p] for p in delete if p in by_id}
            report.locators_rewritten = rewrite_locators(repo, sids, delete, now=now, grace=grace)
            written, deleted = rewrite_index(repo, {by_id[p] for p in delete if p in by_id}, keep)
            report.index_objects_written, report.index_objects_deleted = written, deleted
            for pid in delete:
                repo.store.delete(pack_key(PackId(pid)))
            report.index_rewritten = bool(written or deleted)
        for key in orphans:
            repo.store.delete(key)
        for m in swept:
            repo.store.delete(m.key)
        repo.load_index(workers=workers)
        log.info(
            "prune: %d packs marked, %d repacked, %d deleted (%d bytes), %d rescued, %d orphans",
            report.packs_marked,
            report.packs_repacked,
            report.packs_deleted,
            report.bytes_deleted,
            report.packs_rescued,
            report.orphans_deleted,
        )
        return report
    finally:
        if not dry_run:
            unlock(repo)
