"""``forget`` old snapshots and ``prune`` the data nothing references any more.

Prune works in two phases so that it never deletes a blob a snapshot or an archive in
progress needs (kopia's and restic's rules, adapted):

1. *Mark*: packs none of whose blobs any snapshot references are listed in a mark
   object ``prune/<time>-<id>``. From then on every writer that loads the index treats
   their blobs as absent (``Repository.known``): it uploads such content again instead
   of pointing a new snapshot at a pack about to go.
2. *Sweep*, on a later run, once the mark is older than ``grace`` (longer than the
   longest archive) and no archive that began before the mark is still running (the
   caller says, from the state database): every snapshot is read again, marked packs
   that a snapshot now references are kept, the others are deleted — after a new
   consolidated index that no longer names them is written and the old index objects
   are removed.

Packs that no index names (left by a backup that crashed before writing its index) are
deleted once they are older than ``grace``. Only one prune runs at a time
(``locks/prune``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from hometier.engine.trees import TreeCache
from hometier.errors import Conflict
from hometier.repo import BlobId, PackId, Repository
from hometier.repo.ids import pack_key, parse_pack_key
from hometier.repo.index import PackRecord, decode_index
from hometier.repo.repository import PRUNE_PREFIX
from hometier.repo.snapshot import Snapshot
from hometier.store import ObjectExists, ObjectNotFound

log = logging.getLogger(__name__)

LOCK_KEY = "locks/prune"
LOCK_STALE = dt.timedelta(hours=6)


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
    """Delete snapshot documents (their data goes at the next prunes)."""
    for s in snaps:
        repo.delete_snapshot(s)
        log.info("forgot snapshot %s of %s", s.id[:12], s.user)


def _lock(repo: Repository, now: dt.datetime) -> None:
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "time": now.isoformat()}
    try:
        repo.store.put(LOCK_KEY, json.dumps(holder).encode(), if_absent=True)
        return
    except ObjectExists:
        pass
    try:
        doc = json.loads(repo.store.get(LOCK_KEY))
        since = dt.datetime.fromisoformat(doc["time"])
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        since = now - LOCK_STALE - dt.timedelta(seconds=1)
    if now - since <= LOCK_STALE:
        raise PruneBusy(LOCK_KEY, since.isoformat())
    log.warning("taking over a prune lock left since %s", since)
    repo.store.delete(LOCK_KEY)
    repo.store.put(LOCK_KEY, json.dumps(holder).encode(), if_absent=True)


def _unlock(repo: Repository) -> None:
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


def _used_blobs(repo: Repository, snaps: Sequence[Snapshot], workers: int) -> set[bytes]:
    used: set[bytes] = set()
    if not snaps:
        return used
    trees = TreeCache(repo, [s.tree for s in snaps], workers=workers)
    for tid in trees.ids():
        used.add(tid)
        for n in trees.nodes(BlobId(tid)):
            used.update(n.content)
    return used


def _records(repo: Repository) -> tuple[dict[bytes, PackRecord], list[str]]:
    """Every pack record of every index object, read afresh (several per blob allowed)."""
    records: dict[bytes, PackRecord] = {}
    keys = [o.key for o in repo.store.list("index/")]
    for key in keys:
        for rec in decode_index(repo.store.get(key)):
            records.setdefault(rec.id, rec)
    return records, keys


def prune(
    repo: Repository,
    *,
    now: dt.datetime,
    grace: dt.timedelta = dt.timedelta(days=1),
    archives_since: dt.datetime | None = None,
    dry_run: bool = False,
    workers: int = 4,
) -> PruneReport:
    """Mark unreferenced packs, sweep marks older than ``grace``; see the module doc.

    ``archives_since``: when the oldest archive still in progress began (None: none is
    running). A mark is swept only if it is older than ``grace`` and than that time.
    ``dry_run`` reports what would happen and changes nothing. Raises ``PruneBusy``.
    """
    report = PruneReport()
    if not dry_run:
        _lock(repo, now)
    try:
        repo.load_index()
        records, index_keys = _records(repo)
        report.packs = len(records)
        marks = _marks(repo)
        # Read the snapshots only now: a snapshot written after the marks were read is
        # still seen, and one written after this point was written by an archive that
        # loaded the marks (or that began before them, which ``archives_since`` covers).
        snaps = repo.list_snapshots()
        report.snapshots = len(snaps)
        used = _used_blobs(repo, snaps, workers)
        marked_now = set().union(*(m.packs for m in marks)) if marks else set()

        # Phase 2: sweep old marks.
        delete: set[bytes] = set()
        swept: list[Mark] = []
        for m in marks:
            ripe = now - m.time >= grace and (archives_since is None or archives_since > m.time)
            if not ripe:
                report.marks_waiting += 1
                continue
            swept.append(m)
            for pid in m.packs:
                rec = records.get(pid)
                if rec is not None and any(e.id in used for e in rec.entries):
                    report.packs_rescued += 1
                else:
                    delete.add(pid)

        # Phase 1: mark packs nothing uses (not already marked).
        fresh: list[bytes] = []
        for pid, rec in records.items():
            live = [e for e in rec.entries if e.id in used]
            if not live and pid not in marked_now:
                fresh.append(pid)
                report.bytes_marked += rec.size
            elif live and len(live) < len(rec.entries):
                report.partly_used_bytes += sum(
                    e.stored_len for e in rec.entries if e.id not in used
                )
        report.packs_marked = len(fresh)

        # Orphans: packs no index names, old enough that no running backup owns them.
        orphans: list[str] = []
        for obj in repo.store.list("packs/"):
            parsed = parse_pack_key(obj.key)
            if parsed is None or parsed in records:
                continue
            if obj.modified is not None and now - obj.modified >= grace:
                orphans.append(obj.key)

        report.packs_deleted = len(delete)
        report.bytes_deleted = sum(records[p].size for p in delete if p in records)
        report.orphans_deleted = len(orphans)
        report.marks_swept = len(swept)
        if dry_run:
            return report

        if fresh:
            doc = {"time": now.isoformat(), "packs": sorted(p.hex() for p in fresh)}
            key = f"{PRUNE_PREFIX}{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
            repo.store.put(key, json.dumps(doc, indent=1).encode(), if_absent=True)
        if delete:
            # New index first, then drop the old objects, and only then the packs: a
            # reader never finds an index entry whose pack is gone without also
            # finding that its index objects changed (and reloading).
            keep = [rec for pid, rec in records.items() if pid not in delete]
            new_key = repo.write_index(keep)
            for key in index_keys:
                # The consolidated index can be byte-identical to an existing object
                # (same packs): that one is the new index, never delete it.
                if key != new_key:
                    repo.store.delete(key)
            for pid in delete:
                repo.store.delete(pack_key(PackId(pid)))
            report.index_rewritten = True
        for key in orphans:
            repo.store.delete(key)
        for m in swept:
            repo.store.delete(m.key)
        repo.load_index()
        log.info(
            "prune: %d packs marked, %d deleted (%d bytes), %d rescued, %d orphans",
            report.packs_marked,
            report.packs_deleted,
            report.bytes_deleted,
            report.packs_rescued,
            report.orphans_deleted,
        )
        return report
    finally:
        if not dry_run:
            _unlock(repo)
