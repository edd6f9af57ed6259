"""Is a mount alive, and is anyone using it?

``probe(path, timeout)`` asks the file system for ``statfs`` in a child process: FUSE
always forwards statfs to its daemon (no cache answers it), so a dead daemon gives
ENOTCONN ("Transport endpoint is not connected") at once and a hung one gives no answer.
The child, not a thread of hometier, is what waits: a request stuck in a hung daemon
cannot be interrupted from inside, but its process can be killed.

``users_of(mount_ids, devs)`` finds the processes that hold a mount: an open file or
memory map on it, or their working or root folder in it. It reads ``/proc`` only (fd
``mnt_id``s, map device numbers, ``cwd``/``root`` links), never the file system itself,
so it works on a dead mount and never blocks on a hung one.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

_PROBE = "import os,sys\ntry: os.statvfs(sys.argv[1])\nexcept OSError as e: sys.exit(e.errno)"


class Health(Enum):
    OK = "ok"
    DEAD = "dead"
    """The daemon is gone: ENOTCONN (or ECONNABORTED after an abort)."""
    HUNG = "hung"
    """No answer within the timeout."""
    MISSING = "missing"
    """Nothing is mounted there (ENOENT and friends)."""
    ERROR = "error"


DEAD_ERRNOS = {errno.ENOTCONN, errno.ECONNABORTED}


def probe(path: str | os.PathLike[str], timeout: float = 5.0) -> tuple[Health, str]:
    """``(health, detail)`` of the file system mounted at ``path``."""
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-c", _PROBE, os.fspath(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Health.HUNG, f"no answer to statfs within {timeout:g} s"
    code = done.returncode
    if code == 0:
        return Health.OK, ""
    detail = os.strerror(code) if 0 < code < 256 else f"status {code}"
    if code in DEAD_ERRNOS:
        return Health.DEAD, detail
    if code in (errno.ENOENT, errno.ENOTDIR):
        return Health.MISSING, detail
    return Health.ERROR, detail


@dataclass(frozen=True)
class User:
    pid: int
    how: str
    command: str

    def __str__(self) -> str:
        return f"{self.command}[{self.pid}] ({self.how})"


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _fd_uses(pid: str, ids: set[int]) -> str | None:
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return None
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("mnt_id:"):
                        if int(line.split()[1]) in ids:
                            return f"open file, fd {fd}"
                        break
        except (OSError, ValueError):
            continue
    return None


def _map_uses(pid: str, devs: set[tuple[int, int]]) -> str | None:
    if not devs:
        return None
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) >= 5 and parts[4] != "0":
                    major, _, minor = parts[3].partition(":")
                    if (int(major, 16), int(minor, 16)) in devs:
                        return "memory map"
    except (OSError, ValueError):
        return None
    return None


def _dir_uses(pid: str, points: tuple[str, ...]) -> str | None:
    for link in ("cwd", "root"):
        try:
            where = os.readlink(f"/proc/{pid}/{link}")
        except OSError:
            continue
        where = where.removesuffix(" (deleted)")
        if any(where == p or where.startswith(p.rstrip("/") + "/") for p in points):
            return "working folder" if link == "cwd" else "root folder"
    return None


def users_of(
    mount_ids: Iterable[int],
    devs: Iterable[tuple[int, int]] = (),
    points: Iterable[str] = (),
    *,
    skip: Iterable[int] = (),
) -> list[User]:
    """Processes that use any of the mounts ``mount_ids`` (or, for memory maps and
    working folders, any mount of the devices ``devs`` / below ``points``)."""
    ids = set(mount_ids)
    dev_set = set(devs)
    where = tuple(points)
    skipped = {str(p) for p in skip} | {str(os.getpid())}
    found: list[User] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in skipped:
            continue
        how = _fd_uses(pid, ids) or _map_uses(pid, dev_set) or _dir_uses(pid, where)
        if how:
            found.append(User(int(pid), how, _comm(pid)))
    return found


__all__ = ["Health", "User", "probe", "users_of"]
