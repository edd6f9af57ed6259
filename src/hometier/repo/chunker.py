"""Content-defined chunking (FastCDC) of file contents, streaming and bounded in memory.

A file no larger than ``Chunking.small`` is one blob. A larger one is read in windows of
``WINDOW`` bytes and cut by FastCDC (the C implementation from the ``fastcdc`` package),
carrying the unfinished tail of each window into the next, so cut points are the same as
if the whole file were in memory and an edit moves only the chunks around it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from fastcdc.fastcdc_cy import chunk_generator

WINDOW = 16 * 1024 * 1024


@dataclass(frozen=True)
class Chunking:
    """Chunker parameters; fixed per repository (config) so that dedup is stable."""

    min: int = 256 * 1024
    avg: int = 1024 * 1024
    max: int = 4 * 1024 * 1024

    @property
    def small(self) -> int:
        """Files up to this size are stored as one blob."""
        return self.avg


def _read_exact(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = os.read(fd, min(n, WINDOW))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def iter_chunks(fd: int, length: int, params: Chunking) -> Iterator[bytes]:
    """Yield the chunks of the next ``length`` bytes of ``fd`` (fewer if the file shrinks).

    Never holds more than ``WINDOW + params.max`` bytes. The caller decides what a short
    read means (the file changed while being read).
    """
    if length <= params.small:
        data = _read_exact(fd, length)
        if data:
            yield data
        return
    carry = b""
    remaining = length
    while True:
        want = min(WINDOW, remaining)
        fresh = _read_exact(fd, want) if want > 0 else b""
        remaining -= len(fresh)
        eof = remaining <= 0 or len(fresh) < want
        buf = carry + fresh if carry else fresh
        if not buf:
            return
        view = memoryview(buf)
        start = 0
        for chunk in chunk_generator(view, params.min, params.avg, params.max, False, None):
            end = chunk.offset + chunk.length
            if end == len(buf) and not eof:
                break
            yield bytes(view[chunk.offset : end])
            start = end
        carry = bytes(view[start:])
        view.release()
        if eof:
            if carry:
                yield carry
            return
