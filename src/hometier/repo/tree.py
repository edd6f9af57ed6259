"""Trees: one directory's entries, encoded as canonical JSON.

A tree is ``{"version": 1, "nodes": [node, ...]}`` with nodes sorted by name bytes and
names unique. Names and link targets are bytes on disk: they are written as ``name`` /
``target`` when they are valid UTF-8 and as ``name_b64`` / ``target_b64`` otherwise.
The encoding is canonical (sorted keys, no spaces), so an unchanged directory encodes to
the same bytes and is stored once. ``decode_tree`` validates everything restore relies on:
it is the line of defence against a hostile repository.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from hometier.errors import IntegrityError
from hometier.repo.ids import ID_LEN, BlobId

VERSION = 1
TYPES = ("file", "dir", "symlink", "fifo", "chr", "blk")
MAX_NAME = 4096
MAX_NODES = 2_000_000


@dataclass(slots=True)
class Node:
    """One directory entry and every attribute hometier restores.

    ``ctime_ns`` and ``ino`` are not restored: they let the next backup know that a file
    is unchanged without reading it.
    """

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    size: int = 0
    content: list[BlobId] = field(default_factory=list)
    sparse: list[tuple[int, int]] | None = None
    subtree: BlobId | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[bytes, bytes] | None = None
    link: bytes | None = None
    error: str | None = None
    """Set on a file whose content could not be read: restore skips it."""


def _put_bytes(out: dict[str, Any], key: str, value: bytes) -> None:
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(value).decode("ascii")


def _get_bytes(d: dict[str, Any], key: str) -> bytes | None:
    if key in d:
        v = d[key]
        if not isinstance(v, str):
            raise IntegrityError(f"tree field {key} is not a string")
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): valid JSON, not UTF-8
            raise IntegrityError(f"tree field {key} is not valid UTF-8") from None
    if key + "_b64" in d:
        v = d[key + "_b64"]
        if not isinstance(v, str):
            raise IntegrityError(f"tree field {key}_b64 is not a string")
        try:
            return base64.b64decode(v, validate=True)
        except ValueError as exc:
            raise IntegrityError(f"tree field {key}_b64 is not base64") from exc
    return None


def node_to_json(n: Node) -> dict[str, Any]:
    d: dict[str, Any] = {"type": n.type, "mode": n.mode, "uid": n.uid, "gid": n.gid}
    _put_bytes(d, "name", n.name)
    d["mtime"] = n.mtime_ns
    d["atime"] = n.atime_ns
    d["ctime"] = n.ctime_ns
    d["ino"] = n.ino
    if n.type == "file":
        d["size"] = n.size
        if n.error is not None:
            d["error"] = n.error
        elif n.link is not None:
            _put_bytes(d, "link", n.link)
        else:
            d["content"] = [b.hex() for b in n.content]
        if n.sparse is not None:
            d["sparse"] = [list(x) for x in n.sparse]
    elif n.type == "dir":
        assert n.subtree is not None
        d["subtree"] = n.subtree.hex()
    elif n.type == "symlink":
        assert n.target is not None
        _put_bytes(d, "target", n.target)
    elif n.type in ("chr", "blk"):
        assert n.rdev is not None
        d["rdev"] = list(n.rdev)
    if n.type in ("fifo", "chr", "blk") and n.link is not None:
        _put_bytes(d, "link", n.link)
    if n.xattrs:
        d["xattrs"] = {
            base64.b64encode(k).decode(): base64.b64encode(v).decode()
            for k, v in sorted(n.xattrs.items())
        }
    return d


def encode_tree(nodes: list[Node]) -> bytes:
    """Canonical bytes of a directory; ``nodes`` must already be sorted by name."""
    doc = {"version": VERSION, "nodes": [node_to_json(n) for n in nodes]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _int(d: dict[str, Any], key: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    v = d.get(key, 0)
    if type(v) is not int or not lo <= v <= hi:
        raise IntegrityError(f"tree field {key} is not an integer in range")
    return v


def _blob_id(v: Any) -> BlobId:
    if not isinstance(v, str) or len(v) != 2 * ID_LEN:
        raise IntegrityError("tree holds a malformed blob id")
    try:
        return BlobId(bytes.fromhex(v))
    except ValueError as exc:
        raise IntegrityError("tree holds a malformed blob id") from exc


def valid_name(name: bytes) -> bool:
    """A name restore may create: one path component, never ``.``/``..``/empty/NUL/``/``."""
    return (
        0 < len(name) <= MAX_NAME
        and name not in (b".", b"..")
        and b"/" not in name
        and b"\0" not in name
    )


def _link_path(name: bytes, link: bytes) -> bytes:
    """A hardlink's first name: a path relative to the snapshot root, safe components."""
    if len(link) > 64 * MAX_NAME or not all(valid_name(p) for p in link.split(b"/")):
        raise IntegrityError(f"tree node {name[:64]!r} has an unsafe hardlink path")
    return link


_U32 = 2**32 - 1
_I64_LO, _I64_HI = -(2**63), 2**63 - 1
_FIELDS = (
    ("mode", 0, 0o7777),
    ("uid", 0, _U32),
    ("gid", 0, _U32),
    ("mtime", _I64_LO, _I64_HI),
    ("atime", _I64_LO, _I64_HI),
    ("ctime", _I64_LO, _I64_HI),
    ("ino", 0, 2**64 - 1),
)
"""Every node's integer fields and their ranges (``node_from_json`` checks them inline:
a restore decodes a node per file)."""


def raw_name(d: Any) -> bytes:
    """The name of an undecoded node (an object of ``raw_nodes``), validated as
    ``node_from_json`` does."""
    if not isinstance(d, dict):
        raise IntegrityError("tree node is not an object")
    name = d.get("name")
    if type(name) is str and name.isascii():  # most names: no lone surrogate possible
        name = name.encode()
    else:
        name = _get_bytes(d, "name")
    if name is None or not valid_name(name):
        shown = repr(name[:64]) + ("..." if len(name) > 64 else "") if name else repr(name)
        raise IntegrityError(f"tree holds an unsafe name {shown}")
    return name


def raw_content(d: dict[str, Any]) -> list[BlobId]:
    """A file node's content ids, validated."""
    content = d.get("content", [])
    if not isinstance(content, list):
        raise IntegrityError("tree node content is not a list")
    if len(content) == 1:
        return [_blob_id(content[0])]
    return [_blob_id(c) for c in content]


def raw_sparse(d: dict[str, Any], size: int) -> list[tuple[int, int]] | None:
    """A file node's data extents (None: not sparse), validated against ``size``."""
    if "sparse" not in d:
        return None
    sp = d["sparse"]
    if not isinstance(sp, list):
        raise IntegrityError("tree node sparse map is not a list")
    extents: list[tuple[int, int]] = []
    prev_end = 0
    for x in sp:
        if not (isinstance(x, list) and len(x) == 2 and all(type(i) is int for i in x)):
            raise IntegrityError("tree node sparse extent is malformed")
        off, ln = x
        if off < prev_end or ln < 0 or off + ln > size:
            raise IntegrityError("tree node sparse extents overlap or exceed the size")
        prev_end = off + ln
        extents.append((off, ln))
    return extents


def raw_xattrs(d: dict[str, Any]) -> dict[bytes, bytes] | None:
    """A node's extended attributes (None: none recorded), validated."""
    if "xattrs" not in d:
        return None
    xa = d["xattrs"]
    if not isinstance(xa, dict):
        raise IntegrityError("tree node xattrs is not an object")
    try:
        return {
            base64.b64decode(k, validate=True): base64.b64decode(v, validate=True)
            for k, v in xa.items()
        }
    except (ValueError, TypeError) as exc:
        raise IntegrityError("tree node xattrs are not base64") from exc


def raw_subtree(d: dict[str, Any]) -> BlobId:
    """A folder node's tree id, validated."""
    return _blob_id(d.get("subtree"))


def node_from_json(d: Any) -> Node:
    name = raw_name(d)
    typ = d.get("type")
    if typ not in TYPES:
        raise IntegrityError(f"tree node {name!r} has unknown type {typ!r}")
    get = d.get
    mode, uid, gid = get("mode", 0), get("uid", 0), get("gid", 0)
    mtime, atime, ctime, ino = get("mtime", 0), get("atime", 0), get("ctime", 0), get("ino", 0)
    if not (
        type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(mtime) is int
        and type(atime) is int
        and type(ctime) is int
        and type(ino) is int
        and 0 <= mode <= 0o7777
        and 0 <= uid <= _U32
        and 0 <= gid <= _U32
        and _I64_LO <= mtime <= _I64_HI
        and _I64_LO <= atime <= _I64_HI
        and _I64_LO <= ctime <= _I64_HI
        and 0 <= ino <= 2**64 - 1
    ):
        for key, lo, hi in _FIELDS:  # which one: the error names it
            _int(d, key, lo, hi)
    n = Node(name, typ, mode, uid, gid, mtime, atime, ctime, ino)
    if typ == "file":
        n.size = _int(d, "size", 0, 2**62)
        link = _get_bytes(d, "link")
        if "error" in d:
            if not isinstance(d["error"], str):
                raise IntegrityError("tree node error is not a string")
            n.error = d["error"][:1000]
        elif link is not None:
            n.link = _link_path(name, link)
        else:
            n.content = raw_content(d)
        n.sparse = raw_sparse(d, n.size)
    elif typ == "dir":
        n.subtree = raw_subtree(d)
    elif typ == "symlink":
        target = _get_bytes(d, "target")
        if target is None or not target or b"\0" in target or len(target) > MAX_NAME:
            raise IntegrityError(f"symlink {name!r} has no valid target")
        n.target = target
    elif typ in ("chr", "blk"):
        rdev = d.get("rdev")
        if not (
            isinstance(rdev, list)
            and len(rdev) == 2
            and all(type(i) is int and 0 <= i < 2**32 for i in rdev)
        ):
            raise IntegrityError(f"device {name!r} has no valid rdev")
        n.rdev = (rdev[0], rdev[1])
    if typ in ("fifo", "chr", "blk"):
        link = _get_bytes(d, "link")
        if link is not None:
            n.link = _link_path(name, link)
    n.xattrs = raw_xattrs(d)
    return n


def raw_nodes(data: bytes) -> list[Any]:
    """A tree's node objects, parsed but not validated (``node_from_json`` does)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"tree is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise IntegrityError("tree has an unknown version")
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or len(raw_nodes) > MAX_NODES:
        raise IntegrityError("tree has no valid node list")
    return raw_nodes


def subtrees(data: bytes) -> list[BlobId]:
    """The subtree ids of a tree's folders, without decoding the other entries (a
    reader that walks a snapshot level by level needs only these; ``decode_tree``
    still validates every entry before anything uses it)."""
    return [
        _blob_id(d.get("subtree"))
        for d in raw_nodes(data)
        if isinstance(d, dict) and d.get("type") == "dir"
    ]


def decode_tree(data: bytes) -> list[Node]:
    """Parse and validate a tree: unsafe names, duplicates and bad fields raise."""
    nodes = [node_from_json(d) for d in raw_nodes(data)]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise IntegrityError("tree holds the same name twice")
    return nodes
