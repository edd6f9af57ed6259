"""Typed identifiers: blobs, packs and snapshots are never bare ``bytes``/``str``."""

from __future__ import annotations

import enum
from typing import NewType

import blake3

BlobId = NewType("BlobId", bytes)
"""32 bytes: BLAKE3 keyed with the repository secret, of the blob's plaintext."""

PackId = NewType("PackId", bytes)
"""32 bytes: plain BLAKE3 of the whole pack object."""

SnapshotId = NewType("SnapshotId", str)
"""64 hex digits: plain BLAKE3 of the snapshot document."""

ID_LEN = 32


class BlobType(enum.IntEnum):
    DATA = 0
    TREE = 1


class Compression(enum.IntEnum):
    RAW = 0
    ZSTD = 1


def blob_id(key: bytes, data: bytes | memoryview) -> BlobId:
    """The keyed hash that names a blob (releases the GIL for large inputs)."""
    h = blake3.blake3(key=key, max_threads=1)
    h.update(data)
    return BlobId(h.digest())


def plain_hash(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(
        data, max_threads=blake3.blake3.AUTO if len(data) > 1 << 20 else 1
    ).digest()


def pack_key(pack: PackId) -> str:
    h = pack.hex()
    return f"packs/{h[:2]}/{h}"


def parse_pack_key(key: str) -> PackId | None:
    name = key.rsplit("/", 1)[-1]
    try:
        raw = bytes.fromhex(name)
    except ValueError:
        return None
    return PackId(raw) if len(raw) == ID_LEN else None
