"""``check``: verify a repository's structure and, optionally, every byte of its data."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hometier.engine.trees import TreeCache
from hometier.errors import Error
from hometier.repo import BlobId, PackId, Repository, codec
from hometier.repo.ids import blob_id, pack_key, parse_pack_key, plain_hash
from hometier.repo.locator import PREFIX as LOCATOR_PREFIX
from hometier.repo.locator import newest, parse_key
from hometier.repo.pack import parse_trailer
from hometier.repo.snapshot import Snapshot

log = logging.getLogger(__name__)


class CheckFailed(Error):
    """Repository check found {} problem(s); first: {}"""

    exit_code = 5


@dataclass
class CheckReport:
    snapshots: int = 0
    trees: int = 0
    blobs: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    locators: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    workers: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Verify the repository; raise ``CheckFailed`` listing the problems, else report.

    Structure: every index object parses; every indexed pack exists with the indexed
    size; every snapshot's trees load (each tree is verified against its hash) and every
    blob they reference is indexed; every snapshot's locator parses, names every blob
    the snapshot reaches, each where the index has it, in packs that exist. With
    ``read_data`` every pack is downloaded whole, its id, trailer and each blob's hash
    are verified. Reads only; changes nothing (but the local index cache).
    """
    report = CheckReport()
    repo.load_index(errors=report.errors)
    present: dict[bytes, int] = {}
    for obj in repo.store.list("packs/"):
        parsed = parse_pack_key(obj.key)
        if parsed is None:
            report.warnings.append(f"unexpected object {obj.key}")
            continue
        present[parsed] = obj.size
    indexed = repo.blobs.packs()
    report.packs = len(indexed)
    for pid, size in indexed.items():
        have = present.get(pid)
        if have is None:
            report.errors.append(f"pack {pid.hex()[:16]} is indexed but missing")
        elif have != size:
            report.errors.append(f"pack {pid.hex()[:16]} has {have} bytes, the index says {size}")
    for pid in present.keys() - indexed.keys():
        report.warnings.append(
            f"pack {pid.hex()[:16]} is not indexed (left by an interrupted backup?)"
        )

    locator_keys: dict[str, list[str]] = {}
    for obj in repo.store.list(LOCATOR_PREFIX):
        lk = parse_key(obj.key)
        if lk is None:
            report.warnings.append(f"unexpected object {obj.key}")
            continue
        locator_keys.setdefault(lk[0], []).append(obj.key)

    snaps = repo.list_snapshots(errors=report.errors)
    report.snapshots = len(snaps)
    without = 0
    for snap in snaps:
        missing = 0
        reached: set[bytes] = set()
        try:
            trees = TreeCache(repo, [snap.tree], workers=workers)
            report.trees += len(trees)
            for tid in trees.ids():
                reached.add(tid)
                for n in trees.nodes(BlobId(tid)):
                    for bid in n.content:
                        report.blobs += 1
                        reached.add(bid)
                        if bid not in repo.blobs:
                            missing += 1
        except Error as exc:
            report.errors.append(f"snapshot {snap.id[:12]} ({snap.user}): {exc}")
            continue
        if missing:
            report.errors.append(
                f"snapshot {snap.id[:12]} ({snap.user}) references {missing} blob(s) not in the index"
            )
        keys = locator_keys.pop(snap.id, [])
        if not keys:
            without += 1
        else:
            _check_locator(repo, snap, keys, reached, present, report)
        if progress:
            progress("snapshots", report.snapshots, len(snaps))
    if without:
        msg = f"{without} snapshot(s) have no locator (run `hometier repair locators`)"
        # Version 2 requires one per snapshot; in version 1 they are added by upgrading.
        (report.errors if repo.config.version >= 2 else report.warnings).append(msg)
    for sid in sorted(locator_keys):
        report.warnings.append(f"locator of snapshot {sid[:12]} has no snapshot (forgotten?)")

    if read_data:
        _read_all(repo, indexed, present, report, workers, progress)
    if report.errors:
        raise CheckFailed(len(report.errors), report.errors[0])
    return report


def _check_locator(
    repo: Repository,
    snap: Snapshot,
    keys: list[str],
    reached: set[bytes],
    present: dict[bytes, int],
    report: CheckReport,
) -> None:
    """A snapshot's locator: complete, verified, every entry where the index has it."""
    where = f"locator of snapshot {snap.id[:12]} ({snap.user})"
    if not newest(keys):
        report.errors.append(f"{where} has no complete generation")
        return
    try:
        loc = repo.load_locator(snap.id)
    except Error as exc:
        report.errors.append(f"{where}: {exc}")
        return
    if loc is None:
        report.errors.append(f"{where} vanished while being checked")
        return
    report.locators += 1
    lacking = sum(1 for b in reached if b not in loc)
    if lacking:
        report.errors.append(f"{where} lacks {lacking} blob(s) the snapshot reaches")
    for pid, size in loc.packs().items():
        if present.get(pid) != size:
            report.errors.append(f"{where} names pack {pid.hex()[:16]}, missing or of another size")
    wrong = 0
    for bid, entry in loc.index.items():
        if all(
            (c.pack, c.offset, c.stored_len, c.raw_len, c.type, c.comp)
            != (entry.pack, entry.offset, entry.stored_len, entry.raw_len, entry.type, entry.comp)
            for c in repo.blobs.locations(BlobId(bid))
        ):
            wrong += 1
    if wrong:
        report.errors.append(f"{where} places {wrong} blob(s) where the index does not")


def _read_all(
    repo: Repository,
    indexed: dict[bytes, int],
    present: dict[bytes, int],
    report: CheckReport,
    workers: int,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    lock = threading.Lock()
    key = repo.config.blob_key
    targets = [pid for pid in indexed if pid in present]

    def verify(pid: bytes) -> None:
        problems: list[str] = []
        try:
            data = repo.store.get(pack_key(PackId(pid)))
        except Error as exc:
            problems.append(f"pack {pid.hex()[:16]}: {exc}")
            data = b""
        if data:
            if plain_hash(data) != pid:
                problems.append(f"pack {pid.hex()[:16]} does not match its hash")
            try:
                entries = parse_trailer(data, len(data))
            except Error as exc:
                problems.append(f"pack {pid.hex()[:16]}: {exc}")
                entries = []
            view = memoryview(data)
            for e in entries:
                try:
                    raw = codec.decode(e.comp, view[e.offset : e.offset + e.stored_len], e.raw_len)
                    if blob_id(key, raw) != e.id:
                        problems.append(
                            f"blob {e.id.hex()[:16]} in pack {pid.hex()[:16]} is corrupt"
                        )
                except Error as exc:
                    problems.append(f"blob {e.id.hex()[:16]} in pack {pid.hex()[:16]}: {exc}")
                here = [c for c in repo.blobs.locations(e.id) if c.pack == pid]
                if here and all((c.offset, c.stored_len) != (e.offset, e.stored_len) for c in here):
                    problems.append(f"blob {e.id.hex()[:16]}: index and pack trailer disagree")
        with lock:
            report.errors.extend(problems)
            report.packs_read += 1
            report.bytes_read += len(data)
            if progress:
                progress("packs", report.packs_read, len(targets))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(verify, targets))
