"""The index: which pack holds each blob, in memory and in ``index/`` objects.

An index object is one zstd frame of::

    magic "HTINDEX\\x01" | npacks u32 | per pack: pack_id[32] pack_size u64 count u32
        entries (pack.ENTRY each) | checksum[16]

``checksum`` is the first 16 bytes of the plain BLAKE3 of everything before it. An
index object is written after every pack it names is durable, and its key is
``index/<hex of the plain BLAKE3 of the object>``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import zstandard

from hometier.errors import IntegrityError
from hometier.repo.ids import BlobId, BlobType, Compression, PackId, plain_hash
from hometier.repo.pack import CHECKSUM_LEN, ENTRY, Entry, decode_entries, encode_entries

P = TypeVar("P", "PackRecord", "RawPack")  # noqa: UP040
MAGIC = b"HTINDEX\x01"
HEAD = struct.Struct("<8sI")
PACK = struct.Struct("<32sQI")
MAX_INDEX_RAW = 256 * 1024 * 1024
"""An index object never decodes to more than this (5.8 million blobs): readers refuse
larger ones, writers split."""
INDEX_TARGET = 32 * 1024 * 1024
"""hometier's writers start a new index object (or locator part) past this many bytes
of body (about 730,000 blobs), so that writing or reading one stays small in memory."""


_TYPES = {t.value: t for t in BlobType}
_COMPS = {c.value: c for c in Compression}
"""Enum members by value: a dict lookup, not an enum call (a restore locates each blob
twice, and a storm of logins millions of times)."""


def location(pack: PackId, off: int, stored: int, raw_len: int, typ: int, comp: int) -> Location:
    """A ``Location`` from an index record's fields; ``IntegrityError`` for an unknown
    type or compression."""
    try:
        return Location(pack, off, stored, raw_len, _TYPES[typ], _COMPS[comp])
    except KeyError:
        raise IntegrityError(
            f"index names an unknown blob type {typ} or compression {comp}"
        ) from None


@dataclass(frozen=True, slots=True)
class Location:
    """A blob's place: pack, offset and lengths, type and compression."""

    pack: PackId
    offset: int
    stored_len: int
    raw_len: int
    type: BlobType
    comp: Compression


@dataclass
class PackRecord:
    id: PackId
    size: int
    entries: list[Entry]


def encode_index(packs: Iterable[PackRecord], *, head: bytes | None = None) -> bytes:
    """One object's bytes; ``head`` replaces the index header (locators have their own)."""
    packs = list(packs)
    parts = [head if head is not None else HEAD.pack(MAGIC, len(packs))]
    for p in packs:
        parts.append(PACK.pack(p.id, p.size, len(p.entries)))
        parts.append(encode_entries(p.entries))
    body = b"".join(parts)
    body += plain_hash(body)[:CHECKSUM_LEN]
    return zstandard.ZstdCompressor(level=3).compress(body)


def encode_raw(packs: Iterable[RawPack]) -> bytes:
    """An index object from pack records whose entry tables are still packed."""
    packs = list(packs)
    parts: list[bytes | memoryview] = [HEAD.pack(MAGIC, len(packs))]
    for p in packs:
        parts.append(PACK.pack(p.id, p.size, p.count))
        parts.append(p.table)
    body = b"".join(parts)
    body += plain_hash(body)[:CHECKSUM_LEN]
    return zstandard.ZstdCompressor(level=3).compress(body)


def record_size(count: int) -> int:
    """Bytes a pack record of ``count`` entries adds to a body."""
    return PACK.size + count * ENTRY.size


def split_packs(
    packs: Iterable[P], target: int | None = None, *, head: int = HEAD.size
) -> Iterator[list[P]]:
    """Group pack records so that each group's body stays within ``target`` (default
    ``INDEX_TARGET``); a record too large for the target goes alone. Raises
    ``ValueError`` for a record no object may hold (above ``MAX_INDEX_RAW``)."""
    target = INDEX_TARGET if target is None else target
    group: list[P] = []
    size = head + CHECKSUM_LEN
    for p in packs:
        count = p.count if isinstance(p, RawPack) else len(p.entries)
        n = record_size(count)
        if head + CHECKSUM_LEN + n > MAX_INDEX_RAW:
            raise ValueError(f"a pack of {count} entries does not fit an index object")
        if group and size + n > target:
            yield group
            group, size = [], head + CHECKSUM_LEN
        group.append(p)
        size += n
    if group:
        yield group


@dataclass
class RawPack:
    """One pack's part of an index object, its entry table still packed."""

    id: PackId
    size: int
    table: bytes | memoryview
    count: int


def read_body(data: bytes, magic: bytes, head_size: int, what: str = "index object") -> bytearray:
    """Decompress and checksum an index-like object; ``IntegrityError``.

    Checks the magic before decompressing further and stops at ``MAX_INDEX_RAW``, so a
    hostile object costs at most that much memory, once.
    """
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data)
        head = reader.read(head_size)
        if len(head) < head_size or head[:8] != magic:
            raise IntegrityError(f"not an {what} (bad magic or truncated)")
        declared = zstandard.frame_content_size(data)
        if 0 <= declared <= MAX_INDEX_RAW:
            # The size is in the frame header (hometier writes it): one allocation of
            # exactly that size, not a buffer grown (and copied) as the frame is read.
            body = bytearray(declared)
            body[:head_size] = head
            view = memoryview(body)
            got = head_size
            while got < declared:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
            view.release()
            if got != declared or reader.read(1):
                raise IntegrityError(f"{what} does not decompress to its declared size")
        else:
            body = bytearray(head)
            while len(body) <= MAX_INDEX_RAW:
                part = reader.read(min(16 * 1024 * 1024, MAX_INDEX_RAW + 1 - len(body) + 1))
                if not part:
                    break
                body += part
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} does not decompress: {exc}") from exc
    if len(body) > MAX_INDEX_RAW:
        raise IntegrityError(f"{what} is too large")
    if len(body) < head_size + CHECKSUM_LEN:
        raise IntegrityError(f"{what} is truncated")
    end = len(body) - CHECKSUM_LEN
    if plain_hash(memoryview(body)[:end])[:CHECKSUM_LEN] != bytes(body[end:]):
        raise IntegrityError(f"{what} checksum mismatch")
    return body


def decode_index_raw(data: bytes) -> list[RawPack]:
    """Parse an index object without building an object per blob; ``IntegrityError``."""
    body = read_body(data, MAGIC, HEAD.size)
    _magic, npacks = HEAD.unpack_from(body, 0)
    return decode_records(body, HEAD.size, npacks)


def decode_records(
    body: bytearray, pos: int, npacks: int, what: str = "index object"
) -> list[RawPack]:
    """The ``npacks`` pack records from ``pos`` up to the checksum, which must end them."""
    view = memoryview(body)
    end = len(body) - CHECKSUM_LEN
    out: list[RawPack] = []
    for _ in range(npacks):
        if pos + PACK.size > end:
            raise IntegrityError(f"{what} is truncated")
        pid, size, count = PACK.unpack_from(view, pos)
        pos += PACK.size
        n = count * ENTRY.size
        if pos + n > end:
            raise IntegrityError(f"{what} is truncated")
        # A view, not a copy: the body is held once (consumers copy a pack at a time).
        out.append(RawPack(PackId(pid), size, view[pos : pos + n], count))
        pos += n
    if pos != end:
        raise IntegrityError(f"{what} has trailing bytes")
    return out


def decode_index(data: bytes) -> list[PackRecord]:
    """Parse an index object into records with one ``Entry`` per blob."""
    return [
        PackRecord(r.id, r.size, decode_entries(r.table, r.count)) for r in decode_index_raw(data)
    ]


VALUE = struct.Struct("<IIIIBB")
"""An index value in memory: pack number, offset, stored length, raw length, type, comp."""


class Index:
    """The in-memory map blob -> ``Location``; thread-safe for concurrent readers/adders.

    Compact: a blob costs its 32-byte id and an 18-byte packed value (about 150 bytes
    with the dict's own overhead), so a million blobs fit in ~150 MB.
    """

    def __init__(self) -> None:
        self._map: dict[bytes, bytes] = {}
        self._pack_ids: list[PackId] = []
        self._pack_no: dict[bytes, int] = {}
        self._packs: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, bid: object) -> bool:
        return bid in self._map

    def ids_of(self, typ: BlobType) -> list[BlobId]:
        """Every blob of one type (a value's type byte is at offset 16)."""
        t = int(typ)
        with self._lock:
            return [BlobId(b) for b, v in self._map.items() if v[16] == t]

    def get(self, bid: BlobId) -> Location | None:
        raw = self._map.get(bid)
        if raw is None:
            return None
        no, off, stored, raw_len, typ, comp = VALUE.unpack(raw)
        return location(self._pack_ids[no], off, stored, raw_len, typ, comp)

    def _number(self, pid: bytes, size: int) -> int:
        no = self._pack_no.get(pid)
        if no is None:
            no = self._pack_no[pid] = len(self._pack_ids)
            self._pack_ids.append(PackId(pid))
        self._packs[pid] = size
        return no

    def _replaceable(self, bid: bytes, replace: set[bytes] | frozenset[bytes]) -> bool:
        old = self._map.get(bid)
        return old is None or (bool(replace) and self._pack_ids[VALUE.unpack(old)[0]] in replace)

    def add_pack(
        self, rec: PackRecord, replace: set[bytes] | frozenset[bytes] = frozenset()
    ) -> None:
        """Add a pack's blobs; a blob already located in a pack of ``replace`` (packs a
        prune will delete) moves to this pack."""
        with self._lock:
            no = self._number(rec.id, rec.size)
            for e in rec.entries:
                if self._replaceable(e.id, replace):
                    self._map[e.id] = VALUE.pack(
                        no, e.offset, e.stored_len, e.raw_len, e.type, e.comp
                    )

    def add_raw(self, rec: RawPack, replace: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        """``add_pack`` from a packed entry table, without an object per entry."""
        with self._lock:
            no = self._number(rec.id, rec.size)
            # The hot loop of opening a repository: locals only, no call per blob.
            m, pack, ids, unpack = self._map, VALUE.pack, self._pack_ids, VALUE.unpack
            for bid, typ, comp, off, stored, raw_len in ENTRY.iter_unpack(rec.table):
                if typ > 1 or comp > 1:
                    raise IntegrityError("unknown blob type or compression in the index")
                old = m.get(bid)
                if old is None or (replace and ids[unpack(old)[0]] in replace):
                    m[bid] = pack(no, off, stored, raw_len, typ, comp)

    def packs(self) -> dict[bytes, int]:
        """Pack id -> size, for every pack any index object names."""
        with self._lock:
            return dict(self._packs)

    def items(self) -> Iterator[tuple[bytes, Location]]:
        for bid in list(self._map):
            loc = self.get(BlobId(bid))
            if loc is not None:
                yield bid, loc
