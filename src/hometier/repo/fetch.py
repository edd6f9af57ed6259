"""Fetching many blobs: group them by pack, coalesce neighbours, bound what is in flight.

Also where a blob is looked up: ``Where`` is what a read consults (a snapshot's locator,
or the repository's whole index), and ``_read_twice`` the one retry a damaged read gets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from hometier.errors import IntegrityError
from hometier.repo.ids import BlobId
from hometier.repo.index import Location

log = logging.getLogger(__name__)
T = TypeVar("T")

GAP = 256 * 1024
"""Blobs of one pack closer than this are fetched in one range request."""
SEGMENT = 8 * 1024 * 1024
"""The most one range request fetches; bounds memory per fetch worker."""
FETCH_SLOTS = threading.BoundedSemaphore(12)
"""Segments being fetched and handed out at once in this process, by every reader
together: about ``SEGMENT`` + one decoded chunk (<= 4 MiB) each, so ~150 MB at most."""


class Where(Protocol):
    """Where reads look blobs up: a snapshot's locator, or the whole index."""

    def get(self, bid: BlobId) -> Location | None: ...

    def refresh(self) -> bool:
        """Look again (a newer generation of the locator, new index objects); True if
        something changed."""
        ...


Job = tuple[bytes, list[bytes], int, int]

StoredFn = Callable[[BlobId, Location, memoryview], bool]
"""Offered a blob as it is stored, before it is decoded: True if it took the blob (and
its verification) over (``Repository.for_each_blob``)."""


def plan_jobs(ids: Sequence[bytes], locate: Callable[[BlobId], Location]) -> list[Job]:
    """Group blobs by pack, in offset order, into range requests of at most ``SEGMENT``
    bytes with gaps of at most ``GAP``: (pack, members, start, end) each."""
    # Only (offset, end, id) per blob while grouping: a restore may ask for millions.
    by_pack: dict[bytes, list[tuple[int, int, bytes]]] = {}
    for bid in ids:
        loc = locate(BlobId(bid))
        by_pack.setdefault(loc.pack, []).append((loc.offset, loc.offset + loc.stored_len, bid))
    jobs: list[Job] = []
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
    return jobs


def read_twice(what: str, read: Callable[[], T]) -> T:
    """``read()``, and once more if what it read failed verification (the object's hash,
    its length): a transfer can go wrong where the stored object is fine, as restic
    also assumes. A second failure is the object's own and is raised."""
    try:
        return read()
    except IntegrityError as exc:
        log.warning("%s failed verification (%s); reading it again", what, exc)
        return read()


def run_bounded(fn: Callable[[Any], None], jobs: list[Any], workers: int) -> None:
    """Run ``fn`` over ``jobs`` with at most ``workers`` at once; raise the first error."""
    if not jobs:
        return
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        # One job (a small home's pack, one level of its trees) or one worker: a pool's
        # thread would only hand the work over.
        for job in jobs:
            fn(job)
        return
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
