"""Read every snapshot of a repository as the manifest of the tree it holds.

The shape is ``benchlib.manifest``'s (type, st_mode, uid, gid, mtime_ns, xattrs, then a
file's size, sha256 and hard-link group, a symlink's target), so a snapshot compares
with the simulator's expectation entry by entry, attribute by attribute, byte by byte.

Trees are fetched with the engine's ``TreeCache`` (a few coalesced requests per batch of
snapshots) and file contents with ``Repository.for_each_blob``, which verifies every
blob against its id as a restore does. A file's sha256 is computed once per distinct
content (its list of blob ids): consecutive snapshots of a home share most files, and
homes share the course folder.
"""

from __future__ import annotations

import hashlib
import stat
import threading
from collections.abc import Iterator
from typing import Any

TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
}
BATCH = 40
WORKERS = 8
"""Packs fetched at once: the check waits on SeaweedFS far more than it computes."""


def _content_key(n: Any) -> tuple[Any, ...]:
    return (n.size, tuple(n.content), tuple(tuple(x) for x in n.sparse or ()))


def _assemble(n: Any, data: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    if n.sparse is None:
        for bid in n.content:
            h.update(data[bid])
        return h.hexdigest()
    pos, blobs = 0, iter(n.content)
    for off, length in n.sparse:
        h.update(bytes(off - pos))
        pos = off
        left = length
        while left > 0:
            chunk = data[next(blobs)]
            h.update(chunk)
            left -= len(chunk)
            pos += len(chunk)
    h.update(bytes(n.size - pos))
    return h.hexdigest()


def _walk(cache: Any, snap: Any) -> list[tuple[bytes, Any]]:
    from hometier.engine.export import root_node

    root = root_node(snap)
    out: list[tuple[bytes, Any]] = [(b".", root)]
    stack = [(b"", root.subtree)]
    while stack:
        prefix, bid = stack.pop()
        if bid is None:
            continue
        for n in cache.nodes(bid):
            path = prefix + b"/" + n.name if prefix else n.name
            out.append((path, n))
            if n.type == "dir":
                stack.append((path, n.subtree))
    return out


def snapshot_manifests(
    repo: Any, snaps: list[Any], memo: dict[tuple[Any, ...], str]
) -> Iterator[tuple[Any, dict[bytes, tuple[Any, ...]]]]:
    """(snapshot, manifest) for every snapshot of ``snaps``; ``memo`` caches contents."""
    from hometier.engine.trees import TreeCache

    for i in range(0, len(snaps), BATCH):
        batch = snaps[i : i + BATCH]
        cache = TreeCache(repo, [s.tree for s in batch], workers=WORKERS)
        walked = [(s, _walk(cache, s)) for s in batch]
        del cache
        need: dict[tuple[Any, ...], Any] = {}
        for _s, entries in walked:
            for _p, n in entries:
                if n.type == "file" and n.link is None:
                    key = _content_key(n)
                    if key not in memo:
                        need[key] = n
        _hash_contents(repo, need, memo)
        for snap, entries in walked:
            yield snap, _manifest(entries, memo)


def _hash_contents(
    repo: Any, need: dict[tuple[Any, ...], Any], memo: dict[tuple[Any, ...], str]
) -> None:
    """sha256 of every content in ``need``, fetched with one ``for_each_blob`` call."""
    single = {n.content[0]: k for k, n in need.items() if len(n.content) == 1 and not n.sparse}
    singles = set(single.values())
    multi = {bid for k, n in need.items() if k not in singles for bid in n.content}
    data: dict[bytes, bytes] = {}
    lock = threading.Lock()

    def got(bid: bytes, blob: bytes) -> None:
        with lock:
            key = single.get(bid)
            if key is not None:
                memo[key] = hashlib.sha256(blob).hexdigest()
            if bid in multi:
                data[bid] = blob

    ids = list(single) + list(multi)
    if ids:
        repo.for_each_blob(ids, got, workers=WORKERS)
    for key, n in need.items():
        if key not in memo:
            empty = not n.content and not n.sparse
            memo[key] = hashlib.sha256().hexdigest() if empty else _assemble(n, data)


def _manifest(
    entries: list[tuple[bytes, Any]], memo: dict[tuple[Any, ...], str]
) -> dict[bytes, tuple[Any, ...]]:
    groups: dict[bytes, list[bytes]] = {}
    nodes = dict(entries)
    for path, n in entries:
        if n.link is not None:
            groups.setdefault(n.link, [n.link]).append(path)
    first_of: dict[bytes, bytes] = {}
    for members in groups.values():
        first = min(members)
        for m in members:
            first_of[m] = first
    out: dict[bytes, tuple[Any, ...]] = {}
    for path, n in entries:
        mode = TYPE_BITS.get(n.type, 0) | n.mode
        xattrs = tuple(sorted((n.xattrs or {}).items()))
        common = (mode, n.uid, n.gid, n.mtime_ns, xattrs)
        if n.type == "file":
            body = nodes[n.link] if n.link is not None else n
            sha = memo.get(_content_key(body)) or hashlib.sha256().hexdigest()
            out[path] = ("file", *common, body.size, sha, first_of.get(path))
        elif n.type == "dir":
            out[path] = ("dir", *common)
        elif n.type == "symlink":
            out[path] = ("symlink", *common, n.target)
        else:
            out[path] = ("other", *common, (n.rdev[0] << 8 | n.rdev[1]) if n.rdev else 0)
    return out
