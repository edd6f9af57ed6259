"""Move a home's entries between the home and its quarantine, never replacing a file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from hometier.engine.fsutil import rename_noreplace

log = logging.getLogger(__name__)

CONFLICTS_PREFIX = "hometier-conflicts-"


@dataclass
class Moved:
    conflicts: list[str] = field(default_factory=list)
    conflicts_dir: Path | None = None


def _conflicts_dir(dst: Path, tag: str) -> Path:
    """A fresh conflicts folder in ``dst``, owned like ``dst`` (it holds the user's files)."""
    st = dst.stat()
    for n in range(1, 1000):
        box = dst / (f"{CONFLICTS_PREFIX}{tag}" + (f"-{n}" if n > 1 else ""))
        try:
            box.mkdir(mode=0o700)
        except FileExistsError:
            continue
        if os.geteuid() == 0:
            os.chown(box, st.st_uid, st.st_gid)
        return box
    raise FileExistsError(f"too many conflicts folders in {dst}")


def move_entries(src: Path, dst: Path, tag: str, skip: frozenset[str] = frozenset()) -> Moved:
    """Move every entry of ``src`` into ``dst`` (same filesystem, one rename each).

    A name already taken in ``dst`` is never replaced: the moved entry goes into
    ``dst/hometier-conflicts-<tag>/`` instead and is listed. ``src`` is removed when it
    ends up empty.
    """
    moved = Moved()
    s = os.fsencode(src)
    # The destination is opened once, never through a symlink: a home swapped for a link
    # to somewhere else must not receive the files.
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _move_all(s, dfd, dst, tag, skip, moved)
    finally:
        os.close(dfd)
    try:
        os.rmdir(s)
    except OSError:
        pass
    return moved


def _move_all(s: bytes, dfd: int, dst: Path, tag: str, skip: frozenset[str], moved: Moved) -> None:
    for name in sorted(os.listdir(s)):
        if os.fsdecode(name) in skip:
            continue
        try:
            rename_noreplace(s + b"/" + name, name, dst_dir_fd=dfd)
        except FileExistsError:
            box = moved.conflicts_dir or _conflicts_dir(dst, tag)
            rename_noreplace(s + b"/" + name, os.fsencode(box) + b"/" + name)
            moved.conflicts.append(os.fsdecode(name))
            moved.conflicts_dir = box
            log.warning(
                "%s: kept the existing %s; the other one is in %s", dst, os.fsdecode(name), box
            )
