"""Views of a repository for reading one snapshot: blobs found through its locator.

``Repository.for_snapshot(snap)`` returns a ``SnapshotView``: the same repository, whose
reads (``locate``, ``read_blob``, ``load_tree``, ``for_each_blob``) go through the
snapshot's ``SnapshotWhere`` (its locator, loaded on first use, read again once if a
prune moved a blob, and the whole index as the last resort).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from hometier.errors import IntegrityError
from hometier.repo.blobindex import BlobIndex
from hometier.repo.fetch import StoredFn, Where
from hometier.repo.ids import BlobId
from hometier.repo.index import Location
from hometier.repo.locator import Locator
from hometier.repo.repository import Repository
from hometier.repo.tree import Node
from hometier.repo.writer import LANES, BlobWriter

log = logging.getLogger("hometier.repo.repository")


class SnapshotView(Repository):
    """A ``Repository`` whose reads go through one snapshot's locator (``for_snapshot``);
    it shares everything else with the repository it was made from."""

    def __init__(self, repo: Repository, where: SnapshotWhere) -> None:  # noqa: D107
        self.__dict__.update(repo.__dict__)
        self.parent: Repository = repo.parent if isinstance(repo, SnapshotView) else repo
        self.where = where

    @property
    def blobs(self) -> BlobIndex:
        return self.parent.blobs

    def load_index(self, workers: int = 8, *, errors: list[str] | None = None) -> int:
        return self.parent.load_index(workers, errors=errors)

    def load_index_for_backup(self, workers: int = 8) -> int:
        return self.parent.load_index_for_backup(workers)

    def writer(
        self,
        *,
        pack_size: int = 32 * 1024 * 1024,
        uploads: int = 2,
        lanes: int = LANES,
        locate: bool = True,
    ) -> BlobWriter:
        return self.parent.writer(pack_size=pack_size, uploads=uploads, lanes=lanes, locate=locate)

    def pack_sizes(self) -> dict[bytes, int]:
        """Pack id -> size of the packs this snapshot's locator names."""
        return self.where.packs() if self.where.has_locator else self.parent.pack_sizes()

    def locate(self, bid: BlobId, where: Where | None = None) -> Location:
        where = where or self.where
        if self.where.strict and where is self.where and self.where.has_locator:
            loc = self.where.get(bid)
            if loc is None and self.where.refresh():
                loc = self.where.get(bid)
            if loc is None:
                raise IntegrityError(f"blob {bid.hex()[:16]} is not in the snapshot's locator")
            return loc
        return super().locate(bid, where)

    def read_blob(self, bid: BlobId, where: Where | None = None) -> bytes:
        return super().read_blob(bid, where or self.where)

    def load_tree(self, bid: BlobId, where: Where | None = None) -> list[Node]:
        return super().load_tree(bid, where or self.where)

    def for_each_blob(
        self,
        ids: Iterable[BlobId],
        fn: Callable[[BlobId, bytes], None],
        *,
        workers: int = 4,
        where: Where | None = None,
        stored: StoredFn | None = None,
    ) -> None:
        super().for_each_blob(ids, fn, workers=workers, where=where or self.where, stored=stored)


class SnapshotWhere:
    """A snapshot's locator, loaded on first use; without one, the whole index."""

    def __init__(self, repo: Repository, sid: str, *, strict: bool = False) -> None:
        self.repo = repo
        self.sid = sid
        self.strict = strict
        self._loc: Locator | None = None
        self._loaded = False
        self._refreshed = False
        self._lock = threading.Lock()

    def _locator(self) -> Locator | None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    try:
                        self._loc = self.repo.cached_locator(self.sid)
                    except IntegrityError as exc:
                        if self.strict:
                            raise
                        # Damaged: the whole index still finds every blob, only slower.
                        log.warning("locator of snapshot %s: %s", self.sid[:12], exc)
                        self._loc = None
                    self._loaded = True
                    if self._loc is None and not self.repo._warned_no_locator:
                        self.repo._warned_no_locator = True
                        log.warning(
                            "snapshot %s has no locator: reading the whole index "
                            "(run `hometier upgrade` once)",
                            self.sid[:12],
                        )
        return self._loc

    @property
    def has_locator(self) -> bool:
        return self._locator() is not None

    def get(self, bid: BlobId) -> Location | None:
        loc = self._locator()
        if loc is None:
            return self.repo.blobs.get(bid)
        return loc.get(bid)

    def getter(self) -> Callable[[BlobId], Location | None]:
        """``get`` without its indirections, for a caller that looks up many blobs. It
        reads the locator as loaded now: a later ``refresh`` is not seen."""
        loc = self._locator()
        return self.repo.blobs.get if loc is None else loc.index.get

    def trees(self) -> list[BlobId]:
        """Every tree the locator names ([] without one)."""
        loc = self._locator()
        return [] if loc is None else loc.trees()

    def packs(self) -> dict[bytes, int]:
        """Pack id -> size of the packs the locator names ({} without one)."""
        loc = self._locator()
        return {} if loc is None else loc.packs()

    def refresh(self) -> bool:
        """Read the locator again, once (a prune may have rewritten it)."""
        with self._lock:
            if self._refreshed:
                return False
            self._refreshed = True
        old = self._locator()
        new = self.repo.cached_locator(self.sid, fresh=True)
        if new is None or (old is not None and new.generation == old.generation):
            return False
        self._loc = new
        return True
