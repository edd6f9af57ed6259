"""Reading ``/proc/self/mountinfo``: what the kernel has mounted, and how it propagates.

One line per mount (proc(5)): ``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3
/dev/root rw,errors=continue``. Paths escape space, tab, newline and backslash as
three-digit octal (``\\040``). Several mounts may sit on one mount point (a recovered
bucket folder stacks its new mount on the dead one); the top of such a stack is the one
no other mount at that point has as its parent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    dev: tuple[int, int]
    root: str
    mount_point: str
    options: frozenset[str]
    tags: dict[str, str] = field(hash=False, compare=False)
    """Optional fields: ``shared``/``master``/``propagate_from`` → peer group id."""
    fstype: str = ""
    source: str = ""
    super_options: frozenset[str] = frozenset()

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options

    @property
    def shared(self) -> bool:
        return "shared" in self.tags

    @property
    def slave(self) -> bool:
        return "master" in self.tags

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith("fuse.")


def parse_line(line: str) -> MountEntry:
    """One line of mountinfo; ``ValueError`` if it is not one."""
    left, sep, right = line.rstrip("\n").partition(" - ")
    if not sep:
        raise ValueError(f"not a mountinfo line: {line!r}")
    parts = left.split(" ")
    if len(parts) < 6:
        raise ValueError(f"not a mountinfo line: {line!r}")
    major, minor = parts[2].split(":")
    tags: dict[str, str] = {}
    for opt in parts[6:]:
        name, _, value = opt.partition(":")
        if name:
            tags[name] = value
    tail = right.split(" ")
    return MountEntry(
        mount_id=int(parts[0]),
        parent_id=int(parts[1]),
        dev=(int(major), int(minor)),
        root=unescape(parts[3]),
        mount_point=unescape(parts[4]),
        options=frozenset(parts[5].split(",")),
        tags=tags,
        fstype=tail[0] if tail else "",
        source=unescape(tail[1]) if len(tail) > 1 else "",
        super_options=frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset(),
    )


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [parse_line(line) for line in f if line.strip()]


class MountTable:
    """A snapshot of the mount table with the lookups the mount manager needs."""

    def __init__(self, entries: Iterable[MountEntry]) -> None:
        self.entries = list(entries)
        self.by_id = {e.mount_id: e for e in self.entries}

    @classmethod
    def read(cls, path: str = MOUNTINFO) -> MountTable:
        return cls(read_mountinfo(path))

    def stack(self, mount_point: str | os.PathLike[str]) -> list[MountEntry]:
        """The mounts at ``mount_point``, bottom first (empty if it is no mount point)."""
        point = os.fspath(mount_point)
        here = [e for e in self.entries if e.mount_point == point]
        ids = {e.mount_id for e in here}
        # The bottom's parent is elsewhere; each next one is mounted on the previous.
        ordered = [e for e in here if e.parent_id not in ids]
        by_parent = {e.parent_id: e for e in here if e.parent_id in ids}
        while ordered and ordered[-1].mount_id in by_parent:
            ordered.append(by_parent.pop(ordered[-1].mount_id))
        # Side mounts (the same point reached through two parents) follow, unordered.
        ordered += [e for e in here if e not in ordered]
        return ordered

    def top(self, mount_point: str | os.PathLike[str]) -> MountEntry | None:
        stack = self.stack(mount_point)
        return stack[-1] if stack else None

    def under(self, root: str | os.PathLike[str]) -> list[MountEntry]:
        """Mounts at or below ``root``."""
        base = os.fspath(root).rstrip("/")
        return [
            e for e in self.entries if e.mount_point == base or e.mount_point.startswith(base + "/")
        ]

    def with_dev(self, dev: tuple[int, int]) -> list[MountEntry]:
        """Every mount of one superblock (the daemon's mount and all its binds)."""
        return [e for e in self.entries if e.dev == dev]

    def get(self, mount_id: int | None) -> MountEntry | None:
        return self.by_id.get(mount_id) if mount_id is not None else None

    def above(self, entry: MountEntry) -> list[MountEntry]:
        """The mounts stacked on ``entry`` (its own root covered), lowest first."""
        out: list[MountEntry] = []
        current = entry
        while True:
            nxt = next(
                (
                    e
                    for e in self.entries
                    if e.parent_id == current.mount_id and e.mount_point == entry.mount_point
                ),
                None,
            )
            if nxt is None:
                return out
            out.append(nxt)
            current = nxt


__all__ = ["MOUNTINFO", "MountEntry", "MountTable", "parse_line", "read_mountinfo", "unescape"]
