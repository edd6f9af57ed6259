"""Blob compression: zstd, checked by decompressing before upload; raw if it does not pay."""

from __future__ import annotations

import threading

import zstandard

from hometier.errors import IntegrityError
from hometier.repo.ids import Compression

LEVEL = 3
# A blob is stored raw unless compression saves at least 1/32 of it.
MIN_SAVING = 32
MAX_BLOB = 256 * 1024 * 1024
"""No blob (tree or data) may decode to more than this: bounds memory on hostile input."""

_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=LEVEL, write_checksum=False)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes | memoryview) -> tuple[Compression, bytes]:
    """Compress ``data``; return what to store and how.

    The compressed form is decompressed again and compared with the input before it
    is accepted: a compressor bug must not become silent corruption in the bucket.
    """
    raw = bytes(data)
    if len(raw) < 64:
        return Compression.RAW, raw
    packed = _cctx().compress(raw)
    if len(packed) > len(raw) - len(raw) // MIN_SAVING:
        return Compression.RAW, raw
    if _dctx().decompress(packed, max_output_size=len(raw)) != raw:
        # Never observed; if it ever happens, storing raw is always correct.
        return Compression.RAW, raw
    return Compression.ZSTD, packed


def decode(comp: int, stored: bytes | memoryview, raw_len: int) -> bytes:
    """Decompress a stored blob to exactly ``raw_len`` bytes or raise ``IntegrityError``."""
    if raw_len > MAX_BLOB:
        raise IntegrityError(f"blob declares {raw_len} bytes, above the {MAX_BLOB} limit")
    if comp == Compression.RAW:
        out = bytes(stored)
    elif comp == Compression.ZSTD:
        try:
            if zstandard.frame_content_size(stored) == raw_len:
                # The frame declares the size the index expects (hometier writes it):
                # one allocation of that size, no intermediate parts.
                out = _dctx().decompress(stored, max_output_size=raw_len)
            else:
                out = _decompress_bounded(stored, raw_len)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from exc
    else:
        raise IntegrityError(f"unknown compression {comp}")
    if len(out) != raw_len:
        raise IntegrityError(f"blob decodes to {len(out)} bytes, expected {raw_len}")
    return out


def _decompress_bounded(stored: bytes | memoryview, raw_len: int) -> bytes:
    # Streaming decompression stops after raw_len + 1 bytes whatever the frame header
    # claims, so a decompression bomb costs at most one blob's worth of memory.
    reader = _dctx().stream_reader(stored, read_across_frames=True)
    parts = []
    want = raw_len + 1
    while want > 0:
        part = reader.read(min(want, 4 * 1024 * 1024))
        if not part:
            break
        parts.append(part)
        want -= len(part)
    return b"".join(parts)
