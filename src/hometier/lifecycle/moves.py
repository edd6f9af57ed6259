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


def move_entries(src: Path, dst: Path, tag: str, skip: frozenset[str] = frozenset()) -> Moved:
    """Move every entry of ``src`` into ``dst`` (same filesystem, one rename each).

    A name already taken in ``dst`` is never replaced: the moved entry goes into
    ``dst/hometier-conflicts-<tag>/`` instead and is listed. ``src`` is removed when it
    ends up empty.
    """
    moved = Moved()
    s, d = os.fsencode(src), os.fsencode(dst)
    for name in sorted(os.listdir(s)):
        if os.fsdecode(name) in skip:
            continue
        try:
            rename_noreplace(s + b"/" + name, d + b"/" + name)
        except FileExistsError:
            box = dst / f"{CONFLICTS_PREFIX}{tag}"
            box.mkdir(mode=0o700, exist_ok=True)
            rename_noreplace(s + b"/" + name, os.fsencode(box) + b"/" + name)
            moved.conflicts.append(os.fsdecode(name))
            moved.conflicts_dir = box
            log.warning(
                "%s: kept the existing %s; the other one is in %s", dst, os.fsdecode(name), box
            )
    try:
        os.rmdir(s)
    except OSError:
        pass
    return moved
