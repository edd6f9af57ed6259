"""Locators: what one snapshot's restore needs to find its blobs, and nothing more.

A locator is a partial index: the pack records (pack id, size, entries) of exactly the
blobs a snapshot reaches, stored under ``locators/<snapshot id>/`` beside the snapshot
and written after its packs and index objects, before the snapshot document. Restore,
verification, browsing and downloads read it instead of the repository's whole index,
so their cost grows with the home, not with the hub. Layout (one zstd frame)::

    magic "HTLOCAT\\x01" | snapshot id[32] | generation u32 | part u16 | parts u16
        | npacks u32 | pack records (as in index objects) | checksum[16]

under the key ``locators/<snapshot id>/<generation:8>-<part:4>-of-<parts:4>``. A prune
that deletes a pack some locator names first writes that locator again with the next
generation (see docs/format.md, *Locators*); readers take the newest complete one.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from hometier.errors import IntegrityError
from hometier.repo.ids import BlobId, BlobType, PackId, SnapshotId
from hometier.repo.index import (
    Index,
    Location,
    PackRecord,
    RawPack,
    decode_records,
    encode_index,
    read_body,
    split_packs,
)
from hometier.repo.pack import Entry

PREFIX = "locators/"
MAGIC = b"HTLOCAT\x01"
HEAD = struct.Struct("<8s32sIHHI")
MAX_PARTS = 9999
_NAME = re.compile(r"^(\d{8})-(\d{4})-of-(\d{4})$")


def locator_key(sid: str, generation: int, part: int, parts: int) -> str:
    return f"{PREFIX}{sid}/{generation:08d}-{part:04d}-of-{parts:04d}"


def parse_key(key: str) -> tuple[str, int, int, int] | None:
    """(snapshot id, generation, part, parts) of a locator key, or None."""
    rest = key[len(PREFIX) :] if key.startswith(PREFIX) else ""
    sid, _, name = rest.partition("/")
    m = _NAME.match(name)
    if m is None or len(sid) != 64 or any(c not in "0123456789abcdef" for c in sid):
        return None
    gen, part, parts = (int(g) for g in m.groups())
    if not 0 <= part < parts:
        return None
    return sid, gen, part, parts


def encode_locator(
    sid: str, generation: int, packs: list[PackRecord], target: int | None = None
) -> list[tuple[str, bytes]]:
    """The objects (key, bytes) of one generation of a snapshot's locator."""
    groups = list(split_packs(packs, target, head=HEAD.size)) or [[]]
    if len(groups) > MAX_PARTS:
        raise ValueError("locator needs too many parts")
    out = []
    for i, group in enumerate(groups):
        head = HEAD.pack(MAGIC, bytes.fromhex(sid), generation, i, len(groups), len(group))
        out.append((locator_key(sid, generation, i, len(groups)), encode_index(group, head=head)))
    return out


def decode_locator(key: str, data: bytes) -> list[RawPack]:
    """Verify one locator object against its key; ``IntegrityError``."""
    parsed = parse_key(key)
    if parsed is None:
        raise IntegrityError(f"{key} is not a locator key")
    body = read_body(data, MAGIC, HEAD.size, "locator")
    _m, sid, gen, part, parts, npacks = HEAD.unpack_from(body, 0)
    if (sid.hex(), gen, part, parts) != parsed:
        raise IntegrityError(f"locator {key} does not match its key")
    return decode_records(body, HEAD.size, npacks, "locator")


def newest(keys: Iterable[str]) -> list[str]:
    """Keys of the newest generation whose every part is listed (sorted by part)."""
    gens: dict[int, dict[int, str]] = {}
    want: dict[int, int] = {}
    for key in keys:
        parsed = parse_key(key)
        if parsed is None:
            continue
        _sid, gen, part, parts = parsed
        if want.setdefault(gen, parts) != parts:
            continue  # parts disagree: not a generation a writer finished
        gens.setdefault(gen, {})[part] = key
    for gen in sorted(gens, reverse=True):
        if len(gens[gen]) == want[gen]:
            return [gens[gen][p] for p in range(want[gen])]
    return []


class Locator:
    """A snapshot's blob locations in memory (an ``Index`` of only its blobs)."""

    def __init__(self, sid: SnapshotId | None, generation: int = -1) -> None:
        self.sid = sid
        self.generation = generation
        self.index = Index()

    def add(self, rec: RawPack) -> None:
        self.index.add_raw(rec)

    def get(self, bid: BlobId) -> Location | None:
        return self.index.get(bid)

    def __contains__(self, bid: object) -> bool:
        return bid in self.index

    def __len__(self) -> int:
        return len(self.index)

    def trees(self) -> list[BlobId]:
        """Every tree of the snapshot."""
        return self.index.ids_of(BlobType.TREE)

    def packs(self) -> dict[bytes, int]:
        return self.index.packs()


@dataclass
class LocatorBuilder:
    """Collects the location of every blob a snapshot being written reaches."""

    where: dict[bytes, tuple[PackId, int, Entry]] = field(default_factory=dict)

    def note(self, pid: PackId, size: int, entry: Entry) -> None:
        self.where.setdefault(entry.id, (pid, size, entry))

    def note_location(self, bid: BlobId, loc: Location, size: int) -> None:
        if bid not in self.where:
            entry = Entry(bid, loc.type, loc.comp, loc.offset, loc.stored_len, loc.raw_len)
            self.where[bid] = (loc.pack, size, entry)

    def __contains__(self, bid: object) -> bool:
        return bid in self.where

    def records(self) -> list[PackRecord]:
        """Pack records, packs in id order, entries in offset order."""
        by_pack: dict[bytes, PackRecord] = {}
        for pid, size, entry in self.where.values():
            rec = by_pack.get(pid)
            if rec is None:
                rec = by_pack[pid] = PackRecord(pid, size, [])
            rec.entries.append(entry)
        out = [by_pack[p] for p in sorted(by_pack)]
        for rec in out:
            rec.entries.sort(key=lambda e: e.offset)
        return out
