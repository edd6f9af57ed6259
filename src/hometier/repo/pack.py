"""Packs: many blobs in one object, with a trailer that lists them.

Layout (all integers little-endian)::

    blob 0 | blob 1 | ... | entry 0 | ... | entry N-1 | count u32 | checksum[16]
        | trailer_len u32 | magic "HTPACK\\x00\\x01"

An entry is ``ENTRY`` (46 bytes): id[32], type u8, compression u8, offset u32,
stored_len u32, raw_len u32. ``checksum`` is the first 16 bytes of the plain BLAKE3 of
the entries and count; ``trailer_len`` counts entries, count and checksum. The pack's
id is the plain BLAKE3 of all its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hometier.errors import IntegrityError
from hometier.repo.ids import ID_LEN, BlobId, BlobType, Compression, PackId, plain_hash

MAGIC = b"HTPACK\x00\x01"
ENTRY = struct.Struct("<32sBBIII")
FOOTER = struct.Struct("<I8s")
COUNT = struct.Struct("<I")
CHECKSUM_LEN = 16
MAX_ENTRIES = 4_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one blob lives inside a pack."""

    id: BlobId
    type: BlobType
    comp: Compression
    offset: int
    stored_len: int
    raw_len: int

    def pack(self) -> bytes:
        return ENTRY.pack(self.id, self.type, self.comp, self.offset, self.stored_len, self.raw_len)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, at: int = 0) -> Entry:
        bid, typ, comp, off, stored, raw_len = ENTRY.unpack_from(raw, at)
        try:
            return cls(BlobId(bid), BlobType(typ), Compression(comp), off, stored, raw_len)
        except ValueError as exc:
            raise IntegrityError(f"unknown blob type or compression in entry: {exc}") from exc


def encode_entries(entries: list[Entry]) -> bytes:
    return b"".join(e.pack() for e in entries)


def decode_entries(raw: bytes | memoryview, count: int) -> list[Entry]:
    if len(raw) != count * ENTRY.size:
        raise IntegrityError("entry table has the wrong length")
    return [Entry.unpack(raw, i * ENTRY.size) for i in range(count)]


class PackBuilder:
    """Accumulates encoded blobs; ``seal()`` returns the pack's bytes and entries.

    Not thread-safe: the caller holds a lock around ``add`` and ``seal``.
    """

    def __init__(self) -> None:
        # One growing buffer (realloc of a large block is a remap, not a copy), handed to
        # the store as is: a pack is never held twice in memory.
        self._buf = bytearray()
        self._entries: list[Entry] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self, bid: BlobId, typ: BlobType, comp: Compression, stored: bytes, raw_len: int
    ) -> None:
        self._entries.append(Entry(bid, typ, comp, self.size, len(stored), raw_len))
        self._buf += stored
        self.size += len(stored)

    def seal(self) -> tuple[PackId, bytearray, list[Entry]]:
        table = encode_entries(self._entries) + COUNT.pack(len(self._entries))
        checksum = plain_hash(table)[:CHECKSUM_LEN]
        self._buf += table + checksum + FOOTER.pack(len(table) + CHECKSUM_LEN, MAGIC)
        data, self._buf = self._buf, bytearray()
        return PackId(plain_hash(data)), data, self._entries


def parse_trailer(tail: bytes | memoryview, pack_size: int) -> list[Entry]:
    """Entries of a pack from its last bytes (at least the whole trailer).

    Raises ``IntegrityError`` for a missing magic, a bad checksum or entries that point
    outside the blob area: a truncated or corrupted pack is refused, never guessed at.
    """
    table, count = trailer_table(tail, pack_size)
    return decode_entries(table, count)


def trailer_table(tail: bytes | memoryview, pack_size: int) -> tuple[bytes, int]:
    """``parse_trailer`` without an object per entry: the packed entry table (as index
    objects hold it) and its count, checked the same way."""
    tail = memoryview(tail)
    if len(tail) < FOOTER.size:
        raise IntegrityError("pack is too short to hold a trailer")
    trailer_len, magic = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if magic != MAGIC:
        raise IntegrityError("pack does not end with the pack magic (truncated?)")
    if trailer_len + FOOTER.size > len(tail) or trailer_len < COUNT.size + CHECKSUM_LEN:
        raise IntegrityError("pack trailer length is out of range")
    start = len(tail) - FOOTER.size - trailer_len
    table = tail[start : len(tail) - FOOTER.size - CHECKSUM_LEN]
    checksum = tail[len(tail) - FOOTER.size - CHECKSUM_LEN : len(tail) - FOOTER.size]
    if plain_hash(table)[:CHECKSUM_LEN] != bytes(checksum):
        raise IntegrityError("pack trailer checksum mismatch")
    (count,) = COUNT.unpack_from(table, len(table) - COUNT.size)
    if count > MAX_ENTRIES:
        raise IntegrityError("pack declares too many entries")
    raw = bytes(table[: len(table) - COUNT.size])
    if len(raw) != count * ENTRY.size:
        raise IntegrityError("entry table has the wrong length")
    if raw and (max(raw[32 :: ENTRY.size]) > 1 or max(raw[33 :: ENTRY.size]) > 1):
        raise IntegrityError("unknown blob type or compression in entry")
    blob_area = pack_size - FOOTER.size - trailer_len
    for _bid, _t, _c, off, stored, _raw in ENTRY.iter_unpack(raw):
        if off + stored > blob_area:
            raise IntegrityError("pack entry points outside the blob area")
    return raw, count


def trailer_size(count: int) -> int:
    return count * ENTRY.size + COUNT.size + CHECKSUM_LEN + FOOTER.size


def iter_blobs(data: bytes, entries: list[Entry]) -> Iterator[tuple[Entry, memoryview]]:
    view = memoryview(data)
    for e in entries:
        yield e, view[e.offset : e.offset + e.stored_len]


assert ENTRY.size == ID_LEN + 14
