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
from hometier.repo.pack import parse_trailer

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
    blob they reference is indexed. With ``read_data`` every pack is downloaded whole,
    its id, trailer and each blob's hash are verified. Reads only; changes nothing.
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
    indexed = repo.index.packs()
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

    snaps = repo.list_snapshots(errors=report.errors)
    report.snapshots = len(snaps)
    for snap in snaps:
        missing = 0
        try:
            trees = TreeCache(repo, [snap.tree], workers=workers)
            report.trees += len(trees)
            for tid in trees.ids():
                for n in trees.nodes(BlobId(tid)):
                    for bid in n.content:
                        report.blobs += 1
                        if bid not in repo.index:
                            missing += 1
        except Error as exc:
            report.errors.append(f"snapshot {snap.id[:12]} ({snap.user}): {exc}")
            continue
        if missing:
            report.errors.append(
                f"snapshot {snap.id[:12]} ({snap.user}) references {missing} blob(s) not in the index"
            )
        if progress:
            progress("snapshots", report.snapshots, len(snaps))

    if read_data:
        _read_all(repo, indexed, present, report, workers, progress)
    if report.errors:
        raise CheckFailed(len(report.errors), report.errors[0])
    return report


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
                loc = repo.index.get(e.id)
                try:
                    raw = codec.decode(e.comp, view[e.offset : e.offset + e.stored_len], e.raw_len)
                    if blob_id(key, raw) != e.id:
                        problems.append(
                            f"blob {e.id.hex()[:16]} in pack {pid.hex()[:16]} is corrupt"
                        )
                except Error as exc:
                    problems.append(f"blob {e.id.hex()[:16]} in pack {pid.hex()[:16]}: {exc}")
                if (
                    loc is not None
                    and loc.pack == pid
                    and (loc.offset, loc.stored_len) != (e.offset, e.stored_len)
                ):
                    problems.append(f"blob {e.id.hex()[:16]}: index and pack trailer disagree")
        with lock:
            report.errors.extend(problems)
            report.packs_read += 1
            report.bytes_read += len(data)
            if progress:
                progress("packs", report.packs_read, len(targets))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(verify, targets))
