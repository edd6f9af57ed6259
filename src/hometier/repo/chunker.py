"""Content-defined chunking (FastCDC) of file contents, streaming and bounded in memory.

A file no larger than ``Chunking.small`` is one blob. A larger one is read in windows of
``WINDOW`` bytes and cut by FastCDC (the C implementation from the ``fastcdc`` package),
carrying the unfinished tail of each window into the next, so cut points are the same as
if the whole file were in memory and an edit moves only the chunks around it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

WINDOW = 4 * 1024 * 1024


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


def _read_exact(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = os.pread(fd, min(n, WINDOW), offset)
        if not part:
            break
        parts.append(part)
        n -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def iter_chunks(
    fd: int, length: int, params: Chunking, offset: int = 0
) -> Iterator[bytes | memoryview]:
    """Yield the chunks of the ``length`` bytes of ``fd`` at ``offset`` (fewer if the
    file shrinks).

    A chunk of a file larger than ``params.small`` is a view into the reading buffer,
    valid only until the next chunk is asked for: use it (hash it, compress it, copy
    it) before. Most chunks of a home are already stored, and are only hashed: copying
    each (a fresh allocation of a MiB, faulted in page by page) cost more than the hash.

    Reads with ``pread`` at explicit offsets, never from the descriptor's shared file
    position (finding a sparse file's extents moves it). Reads into one buffer of at
    most ``WINDOW + params.max`` bytes (less for a smaller file, read whole), reused for
    the whole file and kept by the thread for its next one, so memory per reading
    thread stays at that plus the chunk being yielded. Cut points do not depend on the
    buffer's size. The caller decides what a short read means (the file changed while
    being read).
    """
    if length <= params.small:
        data = _read_exact(fd, length, offset)
        if data:
            yield data
        return
    cap = min(WINDOW + params.max, length)
    slot = _reading
    if slot.busy or slot.buf is None or len(slot.buf) < cap:
        buf = bytearray(cap)
        mine = False
    else:
        buf, mine, slot.busy = slot.buf, True, True
    try:
        yield from _cut(fd, buf, cap, length, params, offset)
    finally:
        if mine:
            slot.busy = False
        elif not slot.busy and (slot.buf is None or len(buf) > len(slot.buf)):
            slot.buf = buf  # the next file of this thread reads into it


class _Slot(threading.local):
    """This thread's reading buffer, kept from file to file: a new one costs a page
    fault for every 4 KiB read into it (a zeroed bytearray of the file's size, each time).
    It grows to the largest file's need (at most ``WINDOW`` plus the largest chunk) and
    goes with its thread. ``busy`` while a generator of this thread reads into it: a
    second one at the same time (or one left unfinished) gets a buffer of its own."""

    def __init__(self) -> None:
        self.buf: bytearray | None = None
        self.busy = False


_reading = _Slot()


def _cut(
    fd: int,
    buf: bytearray,
    cap: int,
    length: int,
    params: Chunking,
    offset: int,
) -> Iterator[memoryview]:
    # Imported at first use: the ``fastcdc`` package imports its command line (click)
    # with it, 30 ms that every restore, fetch-home and status paid for nothing.
    from fastcdc.fastcdc_cy import chunk_generator

    view = memoryview(buf)[:cap]
    filled = 0
    remaining = length
    while True:
        eof = False
        while filled < cap and remaining > 0:
            n = os.preadv(fd, [view[filled : filled + min(cap - filled, remaining)]], offset)
            if n == 0:
                eof = True
                break
            filled += n
            remaining -= n
            offset += n
        eof = eof or remaining <= 0
        if filled == 0:
            return
        start = 0
        window = view[:filled]
        for chunk in chunk_generator(window, params.min, params.avg, params.max, False, None):
            end = chunk.offset + chunk.length
            if end == filled and not eof:
                break
            yield view[chunk.offset : end]
            start = end
        window.release()
        if eof:
            return
        rest = filled - start
        buf[:rest] = view[start:filled]
        filled = rest
