"""Fetch every tree of one or more snapshots in a few coalesced requests."""

from __future__ import annotations

import threading

from hometier.errors import IntegrityError
from hometier.repo import BlobId, Repository
from hometier.repo.tree import Node, decode_tree

MAX_TREES = 5_000_000


class TreeCache:
    """Tree blobs reachable from some roots, fetched level by level, decoded on demand.

    Keeps the verified plaintext (canonical JSON) rather than decoded nodes: a home of
    200,000 files costs tens of MB here, not hundreds.
    """

    def __init__(self, repo: Repository, roots: list[BlobId], *, workers: int = 4) -> None:
        self.raw: dict[bytes, bytes] = {}
        lock = threading.Lock()
        if any(r not in repo.index for r in roots):
            repo.load_index()
        level = list(dict.fromkeys(roots))
        while level:
            fetched: dict[bytes, bytes] = {}

            def keep(bid: BlobId, data: bytes, fetched: dict[bytes, bytes] = fetched) -> None:
                with lock:
                    fetched[bid] = data

            repo.for_each_blob(level, keep, workers=workers)
            self.raw.update(fetched)
            if len(self.raw) > MAX_TREES:
                raise IntegrityError("snapshot holds more trees than hometier will load")
            nxt: dict[bytes, None] = {}
            for data in fetched.values():
                for n in decode_tree(data):
                    if n.type == "dir" and n.subtree is not None and n.subtree not in self.raw:
                        nxt[n.subtree] = None
            level = [BlobId(b) for b in nxt]

    def __contains__(self, bid: object) -> bool:
        return bid in self.raw

    def nodes(self, bid: BlobId) -> list[Node]:
        data = self.raw.get(bid)
        if data is None:
            raise IntegrityError(f"tree {bid.hex()[:16]} was not loaded")
        return decode_tree(data)

    def __len__(self) -> int:
        return len(self.raw)
