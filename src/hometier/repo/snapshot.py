"""Snapshots: the named, timed root of one user's home, as a small JSON document.

Key: ``snapshots/<user key>/<id>``, where the user key escapes every byte outside
``[A-Za-z0-9_-]`` as ``%XX`` (so hostile names cannot add path components) and the id
is the plain BLAKE3 of the document. Written only after the index naming every blob it
needs is durable.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hometier.errors import IntegrityError
from hometier.repo.ids import ID_LEN, BlobId, SnapshotId

VERSION = 1
MAX_LISTED = 100
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def user_key(user: str) -> str:
    raw = user.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw) or "%"


@dataclass
class Stats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    """Logical size of all regular files."""
    files_read: int = 0
    bytes_read: int = 0
    blobs_new: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    """What this snapshot added to the repository, after dedup and compression."""
    packs_new: int = 0
    skipped: list[str] = field(default_factory=list)
    """Entries not archived and why (sockets, other filesystems); at most ``MAX_LISTED``."""
    changed: list[str] = field(default_factory=list)
    """Files that changed or vanished while they were read; at most ``MAX_LISTED``."""
    errors: list[str] = field(default_factory=list)
    """Entries that could not be read; a snapshot with errors is not ``complete``."""

    @property
    def complete(self) -> bool:
        return not self.errors

    def note(self, kind: str, what: str) -> None:
        items: list[str] = getattr(self, kind)
        if len(items) < MAX_LISTED:
            items.append(what)


@dataclass
class Snapshot:
    user: str
    time_ns: int
    tree: BlobId
    root: dict[str, int] = field(default_factory=dict)
    """Attributes of the archived folder itself: mode, uid, gid, mtime, atime (ns)."""
    hostname: str = ""
    source: str = ""
    parent: SnapshotId | None = None
    stats: Stats = field(default_factory=Stats)
    program: str = ""
    id: SnapshotId = SnapshotId("")

    @property
    def time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time_ns / 1e9, tz=dt.UTC)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": VERSION,
            "user": self.user,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "time_ns": self.time_ns,
            "tree": self.tree.hex(),
            "root": self.root,
            "hostname": self.hostname,
            "source": self.source,
            "parent": self.parent,
            "stats": asdict(self.stats),
            "program": self.program,
        }
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, sid: SnapshotId) -> Snapshot:
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise IntegrityError(f"snapshot {sid} has unknown version {doc.get('version')}")
            tree = bytes.fromhex(doc["tree"])
            if len(tree) != ID_LEN:
                raise ValueError("tree id length")
            known = {f for f in Stats.__dataclass_fields__}
            stats = Stats(**{k: v for k, v in doc.get("stats", {}).items() if k in known})
            return cls(
                user=str(doc["user"]),
                time_ns=int(doc["time_ns"]),
                tree=BlobId(tree),
                root={str(k): int(v) for k, v in dict(doc.get("root", {})).items()},
                hostname=str(doc.get("hostname", "")),
                source=str(doc.get("source", "")),
                parent=doc.get("parent"),
                stats=stats,
                program=str(doc.get("program", "")),
                id=sid,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"snapshot {sid} is malformed: {exc}") from exc
