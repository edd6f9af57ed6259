"""Per-snapshot summaries of reachable blobs, cached on local disk for ``prune``.

A snapshot is immutable and named by the hash of its document, which names its root
tree, and trees are named by the (keyed) hash of their content: the set of blobs a
snapshot reaches is a function of its id and never changes. Prune's mark phase used to
read every kept snapshot's locator and trees at every run; with this cache it walks
only snapshots it has not summarised before, and reads the others from local disk. An
archive writes its snapshot's entry when ``verify_snapshot`` has read the trees back
from the bucket, so most snapshots are never walked at all.

One file per snapshot, ``<index cache folder>/used/<snapshot id>.sum``::

    magic "HTUSED\\x00\\x01" | repository tag[16] | snapshot id[32] | count u64
        | blob ids (count x 32, distinct) | SHA-256 of everything before[32]

The repository tag is the first 16 bytes of SHA-256 over the repository's id and blob
key, so an entry copied from another repository's cache is refused. Files are written
under a temporary name and renamed; readers verify the whole file (header, length,
order, checksum) and treat anything that does not verify as absent: the snapshot is
walked again. So a missing, truncated, corrupted, foreign or half-written entry costs
a walk, never a blob: the cache can only make prune keep what it would keep anyway.

This is a local cache, not part of the repository format: delete the folder at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hometier.repo import Repository

log = logging.getLogger(__name__)

MAGIC = b"HTUSED\x00\x01"
"""The last byte is the walk's version: bump it if what a walk counts ever changes."""
HEAD = struct.Struct("<8s16s32sQ")
ID = 32
DIGEST = 32
CHUNK = 1 << 18
"""Ids read at once (8 MiB): files of bigger homes are read in several slices."""
SUFFIX = ".sum"
STALE_PART = 3600.0
"""Seconds after which a temporary file left by a killed writer is removed."""
SLACK = 1.0
"""Seconds by which a file's modification time (the kernel's coarse clock) may lag
``time.time()``: an entry written just after a listing can look this much older."""


def repo_tag(repo_id: str, blob_key: bytes) -> bytes:
    return hashlib.sha256(repo_id.encode() + b"\x00" + blob_key).digest()[:16]


def summary_cache(repo: Repository) -> SummaryCache:
    """The summaries of ``repo``'s snapshots, kept beside its local index."""
    return SummaryCache(
        os.path.join(repo.blobs.folder, "used"), repo_tag(repo.config.id, repo.config.blob_key)
    )


class SummaryCache:
    """The summaries of one repository's snapshots in ``folder``; safe for several
    processes at once (every write is a rename of a complete file)."""

    def __init__(self, folder: str, tag: bytes) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.folder = folder
        self.tag = tag
        self.rejected = 0
        """Entries found but refused (damaged, foreign) since this object was made."""

    def _path(self, sid: str) -> str:
        return os.path.join(self.folder, sid + SUFFIX)

    def read(self, sid: str) -> Iterator[bytes] | None:
        """The snapshot's ids as slices of concatenated 32-byte ids, or None if
        there is no entry that verifies. The file is verified in full before the first
        slice is given out."""
        try:
            fd = os.open(self._path(sid), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, OSError):
            return None
        try:
            if not self._verify(fd, sid):
                self.rejected += 1
                log.warning("refusing the damaged or foreign used-blob summary of %s", sid[:12])
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return self._slices(fd)

    def _verify(self, fd: int, sid: str) -> bool:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEAD.size, 0)
        if len(head) != HEAD.size:
            return False
        magic, tag, raw_sid, count = HEAD.unpack(head)
        if magic != MAGIC or tag != self.tag or raw_sid.hex() != sid:
            return False
        if size != HEAD.size + count * ID + DIGEST:
            return False
        h = hashlib.sha256(head)
        pos = HEAD.size
        end = HEAD.size + count * ID
        while pos < end:
            data = os.pread(fd, min(CHUNK * ID, end - pos), pos)
            if not data:
                return False
            h.update(data)
            pos += len(data)
        return os.pread(fd, DIGEST, end) == h.digest()

    def _slices(self, fd: int) -> Iterator[bytes]:
        try:
            count = HEAD.unpack(os.pread(fd, HEAD.size, 0))[3]
            pos, end = HEAD.size, HEAD.size + count * ID
            while pos < end:
                data = os.pread(fd, min(CHUNK * ID, end - pos), pos)
                if not data:
                    raise OSError("used-blob summary shrank while being read")
                yield data
                pos += len(data)
        finally:
            os.close(fd)

    def write(self, sid: str, ids: list[bytes]) -> None:
        """Store the summary of ``sid``: ``ids`` distinct. Best effort: a
        failure (a full disk) is logged and the next prune walks the snapshot again."""
        head = HEAD.pack(MAGIC, self.tag, bytes.fromhex(sid), len(ids))
        tmp = os.path.join(self.folder, f".{sid}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                h = hashlib.sha256(head)
                with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                    f.write(head)
                    for i in range(0, len(ids), CHUNK):
                        data = b"".join(ids[i : i + CHUNK])
                        h.update(data)
                        f.write(data)
                    f.write(h.digest())
            except BaseException:
                os.unlink(tmp)
                raise
            # No fsync: a file torn by a crash fails its checksum and is walked again.
            os.replace(tmp, self._path(sid))
        except OSError as exc:
            log.warning("could not cache the used blobs of %s: %s", sid[:12], exc)

    def keep_only(self, sids: Iterable[str], *, listed_at: float | None = None) -> int:
        """Remove the entries of snapshots not in ``sids`` (forgotten) and temporary
        files of killed writers; returns how many entries were removed. ``listed_at``
        (``time.time()`` before ``sids`` was listed): entries written since then are
        kept, since an archive writes its snapshot's summary when it verifies it, after
        the listing may have been taken. Without it such an entry is removed and the
        snapshot walked again at the next prune."""
        keep = set(sids)
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("could not list the used-blob summaries: %s", exc)
            return 0
        for entry in entries:
            name = entry.name
            try:
                if name.endswith(SUFFIX) and name[: -len(SUFFIX)] not in keep:
                    if listed_at is not None and entry.stat().st_mtime >= listed_at - SLACK:
                        continue
                    os.unlink(entry.path)
                    removed += 1
                elif name.endswith(".part") and now - entry.stat().st_mtime > STALE_PART:
                    os.unlink(entry.path)
            except OSError:
                pass  # gone meanwhile, or a disk that refuses: the next prune tries again
        return removed
