"""Snapshots: the named, timed root of one user's home, as a small JSON document.

Key: ``snapshots/<user key>/<id>``, where the user key escapes every byte outside
``[A-Za-z0-9_-]`` as ``%XX`` (so hostile names cannot add path components) and the id
is the plain BLAKE3 of the document. Written only after the index naming every blob it
needs is durable.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hometier.errors import IntegrityError
from hometier.repo.ids import ID_LEN, BlobId, SnapshotId, plain_hash

VERSION = 1
MAX_LISTED = 100
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


MAX_KEY = 255
"""A user key longer than this (a long non-ASCII name triples when escaped) is cut and
completed with a hash, so that it stays one path component (a ``file://`` repository)."""


def user_key(user: str) -> str:
    try:
        # A name decoded from bytes with os.fsdecode gets its bytes back.
        raw = user.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = user.encode("utf-8", "surrogatepass")
    key = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw) or "%"
    return _bounded(key, raw, MAX_KEY)


def local_key(user: str, limit: int = 200) -> str:
    """``user_key`` bounded tighter, for names hometier derives on the homes volume
    (``<key>.lock``, ``<key>.<snapshot>``) that must stay under NAME_MAX with a suffix."""
    try:
        raw = user.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = user.encode("utf-8", "surrogatepass")
    return _bounded(user_key(user), raw, limit)


def _bounded(key: str, raw: bytes, limit: int) -> str:
    if len(key) <= limit:
        return key
    # "~" never appears in an escaped key: a cut key cannot collide with a whole one.
    return key[: limit - 41] + "~" + plain_hash(raw).hex()[:40]


def user_from_key(key: str) -> str | None:
    """The user name a ``user_key`` came from, or None if ``key`` is not one."""
    raw = bytearray()
    i = 0
    try:
        while i < len(key):
            c = key[i]
            if c == "%":
                raw.append(int(key[i + 1 : i + 3], 16))
                i += 3
            elif ord(c) < 128 and ord(c) in _SAFE:
                raw.append(ord(c))
                i += 1
            else:
                return None
        return bytes(raw).decode("utf-8", "surrogateescape") if raw else None
    except ValueError:
        return None


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
    root_xattrs: dict[bytes, bytes] = field(default_factory=dict)
    """``user.*`` extended attributes of the archived folder itself."""
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
            "root_xattrs": {
                base64.b64encode(k).decode(): base64.b64encode(v).decode()
                for k, v in sorted(self.root_xattrs.items())
            },
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
            doc = json.loads(data, parse_constant=_no_constant)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            if doc.get("version") != VERSION:
                raise IntegrityError(f"snapshot {sid} has unknown version {doc.get('version')}")
            tree = bytes.fromhex(doc["tree"])
            if len(tree) != ID_LEN:
                raise ValueError("tree id length")
            stats = _stats(doc.get("stats", {}))
            parent = doc.get("parent")
            if parent is not None and not (isinstance(parent, str) and len(parent) <= 128):
                raise ValueError("parent is not a snapshot id")
            xattrs = {
                base64.b64decode(k, validate=True): base64.b64decode(v, validate=True)
                for k, v in dict(doc.get("root_xattrs", {})).items()
            }
            return cls(
                user=_str(doc["user"]),
                time_ns=_int(doc["time_ns"], -(2**63), 2**63 - 1),
                tree=BlobId(tree),
                root=_root(doc.get("root", {})),
                root_xattrs=xattrs,
                hostname=str(doc.get("hostname", "")),
                source=str(doc.get("source", "")),
                parent=SnapshotId(parent) if parent is not None else None,
                stats=stats,
                program=str(doc.get("program", "")),
                id=sid,
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise IntegrityError(f"snapshot {sid} is malformed: {exc}") from exc


_ROOT_RANGES = {
    "mode": (0, 0o7777),
    "uid": (0, 2**32 - 1),
    "gid": (0, 2**32 - 1),
    "mtime": (-(2**63), 2**63 - 1),
    "atime": (-(2**63), 2**63 - 1),
}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _int(v: object, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{v!r} is not an integer in range")
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _root(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError("root is not an object")
    out = {}
    for key, (lo, hi) in _ROOT_RANGES.items():
        if key in raw:
            out[key] = _int(raw[key], lo, hi)
    return out


def _stats(raw: object) -> Stats:
    if not isinstance(raw, dict):
        raise ValueError("stats is not an object")
    stats = Stats()
    for f in Stats.__dataclass_fields__:
        if f not in raw:
            continue
        v = raw[f]
        if isinstance(getattr(stats, f), list):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"stats.{f} is not a list of strings")
            setattr(stats, f, v[:MAX_LISTED])
        else:
            setattr(stats, f, _int(v, 0, 2**63 - 1))
    return stats
