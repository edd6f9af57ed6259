"""The CPU this process may use, and whether it has room for one more restore.

``cores()`` counts the cores this process may run on: its affinity, lowered by its
cgroup's quota where one is set (a container's CPU limit), so that a pod limited to two
cores on a 64-core node counts two.

``Admission`` decides when another restore may start. A restore of a home already uses
about a core (its fetch threads, its writer processes, the S3 server if it runs beside
it), so starting more restores than cores at once only adds contention where the CPU is
the bound: measured on 2 cores with SeaweedFS on loopback, 16 homes through 8 restores
at once took 1.2-1.4x the CPU and the wall time of 2 at once. Where the object store is
far away, a restore waits on the network and more at once finish sooner. So restores
start freely up to one per core (the floor), and beyond it, up to the pool's size, only
while the CPU has room: while runnable tasks waited for a CPU less than ``THRESHOLD`` of
the last ``WINDOW`` (Linux's pressure stall information, the container's own where its
cgroup has it). Without that signal the pool alone bounds them, as before.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

WINDOW = 0.25
"""Seconds of CPU pressure looked at before a restore beyond the floor starts; a window
begins after each start, so that the last one's load is seen before the next."""
THRESHOLD = 0.25
"""Share of a window in which some runnable task waited for a CPU, below which the CPU
has room. Measured on 2 cores: 0.00-0.02 idle, 0.45 (median) with one restore at a time
of a CPU-bound storm, 0.62 with two, 0.74 with eight."""


def cores(root: str = "/") -> int:
    """Cores this process may use: its CPU affinity, lowered by a cgroup CPU quota
    (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1), rounded up. Never below 1."""
    affinity = getattr(os, "sched_getaffinity", None)
    n = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = _quota(Path(root))
    return max(1, min(n, quota) if quota else n)


def _cgroups(root: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path, from ``/proc/self/cgroup`` ("" is v2)."""
    out: dict[str, str] = {}
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                out[name] = parts[2].lstrip("/")
    return out


def _quota(root: Path) -> int | None:
    """The cgroup's CPU quota in whole cores (rounded up), or None when there is none."""
    groups = _cgroups(root)
    mnt = root / "sys/fs/cgroup"
    if "" in groups:
        try:
            limit, period = (mnt / groups[""] / "cpu.max").read_text().split()[:2]
            if limit != "max":
                return math.ceil(int(limit) / int(period))
        except (OSError, ValueError):
            pass
    if "cpu" in groups:
        for folder in ("cpu", "cpu,cpuacct"):
            base = mnt / folder / groups["cpu"]
            try:
                limit_us = int((base / "cpu.cfs_quota_us").read_text())
                period_us = int((base / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if limit_us > 0 and period_us > 0:
                return math.ceil(limit_us / period_us)
    return None


def stall_reader(root: str = "/") -> Callable[[], float | None] | None:
    """A function returning the seconds in which some runnable task waited for a CPU,
    cumulative (``some total`` of pressure stall information): the cgroup v2 group's own
    ``cpu.pressure`` where it has one, else the machine's ``/proc/pressure/cpu``. None
    when neither can be read (no PSI in the kernel, or it is switched off)."""
    base = Path(root)
    candidates = []
    v2 = _cgroups(base).get("")
    if v2 is not None:
        candidates.append(base / "sys/fs/cgroup" / v2 / "cpu.pressure")
    candidates.append(base / "proc/pressure/cpu")
    for path in candidates:
        if _stalled(path) is not None:
            return partial(_stalled, path)
    return None


def _stalled(path: Path) -> float | None:
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return None
    if not first.startswith(b"some "):
        return None
    for field in first.split():
        if field.startswith(b"total="):
            try:
                return int(field[6:]) / 1e6
            except ValueError:
                return None
    return None


class Admission:
    """Whether another restore may start now (see the module's docstring).

    ``enter()`` takes a place or says no at once; ``leave()`` gives it back; ``wait()``
    sleeps until a place is given back or a window has passed. The caller bounds the
    total (its pool); this only holds restores back while the CPU has no room. Thread-safe.
    """

    def __init__(
        self,
        floor: int | None = None,
        *,
        stalled: Callable[[], float | None] | None = None,
        window: float = WINDOW,
        threshold: float = THRESHOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = max(1, cores() if floor is None else floor)
        self.stalled = stalled
        self.window = window
        self.threshold = threshold
        self.clock = clock
        self.running = 0
        self.peak = 0
        self.held = 0
        """Refused starts beyond the floor (the CPU had no room, or the window was not
        over yet): every poll of a waiting thread counts."""
        self._since: tuple[float, float] | None = None
        self._cond = threading.Condition()

    def enter(self) -> bool:
        with self._cond:
            if self.running >= self.floor and not self._room():
                return False
            self.running += 1
            self.peak = max(self.peak, self.running)
            self._since = None  # the next window begins now
            return True

    def _room(self) -> bool:
        """Under the lock: did runnable tasks wait for a CPU less than ``threshold`` of a
        whole window that began after the last start? No signal: room."""
        if self.stalled is None:
            return True
        now, stalled = self.clock(), self.stalled()
        if stalled is None:
            return True
        if self._since is None:
            self._since = (now, stalled)
            self.held += 1
            return False
        t0, s0 = self._since
        if now - t0 < self.window:
            self.held += 1
            return False
        self._since = (now, stalled)
        if (stalled - s0) / (now - t0) < self.threshold:
            return True
        self.held += 1
        return False

    def leave(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait(self.window)

    def wake(self) -> None:
        """Wake the threads in ``wait`` now (work they may start without a place came)."""
        with self._cond:
            self._cond.notify_all()


def admission(adaptive: bool = True) -> Admission:
    """The service's admission: one restore per core, more while the CPU has room
    (``adaptive``); with ``adaptive=False`` the pool alone bounds restores."""
    if not adaptive:
        return Admission(floor=1, stalled=None)
    return Admission(stalled=stall_reader())
