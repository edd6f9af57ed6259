"""Which files of a filesystem some process is using right now, from ``/proc``.

A home is not moved aside (and a quarantine is not purged) while a process holds one of
its files open, has its working or root folder in it, or has one of its files mapped
into memory: such a process keeps writing into the file after the move, and those
writes would be purged with the quarantine. ``busy_inodes(dev)`` answers with the inode
numbers on device ``dev`` that processes hold, each with one process that holds it;
``compare_tree`` reports every entry of a home whose inode is among them.

It sees the processes of this PID namespace: on one host (local spawners, TLJH,
DockerSpawner) all of them; in a Kubernetes pod only the pod's own, so there the Hub's
view of running servers and leases stay the signal for other pods.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

PROC = "/proc"


def _pids() -> Iterator[str]:
    try:
        names = os.listdir(PROC)
    except OSError:
        return
    me = str(os.getpid())
    for name in names:
        if name.isdigit() and name != me:
            yield name


def _maps(pid: str, dev: int) -> Iterator[int]:
    """Inodes on ``dev`` that ``pid`` has mapped (``/proc/PID/maps``: the 4th field is
    the device as ``major:minor`` in hex, the 5th the inode)."""
    try:
        with open(f"{PROC}/{pid}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return
    want = b" %02x:%02x " % (os.major(dev), os.minor(dev))
    if want not in data:
        return  # most processes map nothing of a home's filesystem: one search, no parse
    want = want.strip()
    for line in data.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 5 and parts[3] == want and parts[4] != b"0":
            yield int(parts[4])


def busy_inodes(dev: int) -> dict[int, int]:
    """Inode → PID of a process holding it (open file, working folder, root folder,
    executable or memory mapping), for the files on device ``dev``. This process itself
    is left out. Processes that end meanwhile are skipped."""
    found: dict[int, int] = {}
    for pid in _pids():
        base = f"{PROC}/{pid}"
        links = [f"{base}/cwd", f"{base}/root", f"{base}/exe"]
        try:
            links += [f"{base}/fd/{n}" for n in os.listdir(f"{base}/fd")]
        except OSError:
            pass  # gone, a kernel thread, or not ours to read
        for link in links:
            try:
                st = os.stat(link)
            except OSError:
                continue
            if st.st_dev == dev:
                found.setdefault(st.st_ino, int(pid))
        for ino in _maps(pid, dev):
            found.setdefault(ino, int(pid))
    return found


def _unescape(field: bytes) -> bytes:
    """``/proc/self/mountinfo`` escapes space, tab, newline and backslash as ``\\ooo``."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i : i + 1]
            i += 1
    return bytes(out)


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points strictly inside the folder ``path`` (this process's mount namespace):
    a home with one cannot be moved aside whole, so it is not archived."""
    base = os.path.realpath(os.fsencode(path)).rstrip(b"/") + b"/"
    try:
        with open(f"{PROC}/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(b" ")
        if len(parts) > 4:
            point = _unescape(parts[4])
            if point.startswith(base):
                found.append(os.fsdecode(point))
    return sorted(found)


def hardlinks_protected() -> bool | None:
    """``fs.protected_hardlinks``: whether users may hard-link only files they own (or
    may read and write). Without it a user can link a root-only file into their home,
    and the archive (reading as root) would put it in a snapshot they can download.
    None where it cannot be read."""
    try:
        with open(f"{PROC}/sys/fs/protected_hardlinks") as f:
            return f.read().strip() != "0"
    except OSError:
        return None


def describe_process(pid: int) -> str:
    """``pid`` and its command name, for messages (``1234 (python3)``)."""
    try:
        with open(f"{PROC}/{pid}/comm") as f:
            return f"{pid} ({f.read().strip()})"
    except OSError:
        return str(pid)


def is_zombie_or_gone(pid: int) -> bool:
    """True if ``pid`` does not exist or has exited and waits to be reaped (a zombie
    holds nothing: its claims are as dead as its process)."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    # The command name is in parentheses and may itself hold spaces or parentheses.
    state = stat.rsplit(b")", 1)[-1].split()[:1]
    return state in ([b"Z"], [b"X"])
