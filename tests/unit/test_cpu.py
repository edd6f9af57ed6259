"""``hometier.cpu``: the cores a process may use (its affinity and its cgroup's quota),
the CPU pressure it reads, and the admission that holds restores back beyond one per
core while the CPU has no room. The cgroup and pressure files are written into a fake
root (what a container or a host would show); the admission runs on a fake clock."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hometier import cpu

AFFINITY = len(os.sched_getaffinity(0))


def _root(tmp_path: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_cores_is_the_affinity_without_a_quota(tmp_path: Path) -> None:
    assert cpu.cores(str(tmp_path)) == AFFINITY  # nothing readable at all
    root = _root(
        tmp_path,
        {"proc/self/cgroup": "0::/pod\n", "sys/fs/cgroup/pod/cpu.max": "max 100000\n"},
    )
    assert cpu.cores(root) == AFFINITY


@pytest.mark.parametrize(
    ("cgroup", "files", "quota"),
    [
        ("0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "50000 100000\n"}, 1),
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # a cgroup namespace: the root
        (
            "12:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            1,
        ),
        (
            "4:cpu:/x\n",
            {"cpu/x/cpu.cfs_quota_us": "250000\n", "cpu/x/cpu.cfs_period_us": "100000\n"},
            3,
        ),
    ],
)
def test_a_cgroup_quota_lowers_the_cores(
    tmp_path: Path, cgroup: str, files: dict[str, str], quota: int
) -> None:
    root = _root(
        tmp_path,
        {"proc/self/cgroup": cgroup, **{f"sys/fs/cgroup/{k}": v for k, v in files.items()}},
    )
    assert cpu.cores(root) == min(AFFINITY, quota)


@pytest.mark.parametrize(
    "files",
    [
        {"sys/fs/cgroup/cpu.max": "garbage\n"},
        {"sys/fs/cgroup/cpu.max": "100000\n"},
        {"sys/fs/cgroup/cpu.max": "50000 zero\n"},
        {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "1"},
    ],
)
def test_an_unreadable_or_unlimited_quota_counts_the_affinity(
    tmp_path: Path, files: dict[str, str]
) -> None:
    root = _root(tmp_path, {"proc/self/cgroup": "0::/\n5:cpu:/\n", **files})
    assert cpu.cores(root) == AFFINITY


PSI = "some avg10=1.00 avg60=2.00 avg300=3.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def test_the_cgroups_own_pressure_is_read_before_the_machines(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {
            "proc/self/cgroup": "0::/pod\n",
            "sys/fs/cgroup/pod/cpu.pressure": PSI.format(2_500_000),
            "proc/pressure/cpu": PSI.format(9_000_000),
        },
    )
    read = cpu.stall_reader(root)
    assert read is not None and read() == 2.5
    (tmp_path / "sys/fs/cgroup/pod/cpu.pressure").write_text(PSI.format(3_000_000))
    assert read() == 3.0  # read again at every call, cumulative


def test_the_machines_pressure_without_a_cgroup_file(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {"proc/self/cgroup": "0::/pod\n", "proc/pressure/cpu": PSI.format(9_000_000)},
    )
    read = cpu.stall_reader(root)
    assert read is not None and read() == 9.0


@pytest.mark.parametrize("text", ["", "full avg10=0 total=5\n", "some avg10=0 total=x\n"])
def test_no_pressure_signal_when_missing_or_malformed(tmp_path: Path, text: str) -> None:
    assert cpu.stall_reader(str(tmp_path)) is None
    root = _root(tmp_path, {"proc/pressure/cpu": text})
    assert cpu.stall_reader(root) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.stalled = 0.0

    def step(self, seconds: float, stalled_share: float) -> None:
        """Let ``seconds`` pass during which some task waited ``stalled_share`` of them."""
        self.now += seconds
        self.stalled += seconds * stalled_share


def _admission(clock: Clock, floor: int = 2) -> cpu.Admission:
    return cpu.Admission(
        floor,
        stalled=lambda: clock.stalled,
        window=0.25,
        threshold=0.25,
        clock=lambda: clock.now,
    )


def test_up_to_the_floor_restores_start_whatever_the_pressure() -> None:
    clock = Clock()
    adm = _admission(clock)
    clock.step(10, 1.0)  # saturated
    assert adm.enter() and adm.enter()
    assert not adm.enter()
    adm.leave()
    assert adm.enter()  # a place below the floor is free again: no window needed
    assert adm.running == 2 and adm.peak == 2


def test_beyond_the_floor_only_after_a_whole_window_with_room() -> None:
    clock = Clock()
    adm = _admission(clock)
    assert adm.enter() and adm.enter()
    assert not adm.enter()  # the window begins now
    clock.step(0.2, 0.0)
    assert not adm.enter(), "a window shorter than WINDOW decides nothing"
    clock.step(0.1, 0.0)
    assert adm.enter(), "a whole window without pressure: room for one more"
    assert not adm.enter(), "the next window begins after that start"
    clock.step(0.3, 0.5)
    assert not adm.enter(), "half the window stalled: no room"
    clock.step(0.3, 0.3)
    assert not adm.enter(), "above the threshold"
    clock.step(0.3, 0.1)
    assert adm.enter()
    assert adm.running == 4 and adm.peak == 4 and adm.held >= 5


def test_without_a_pressure_signal_the_pool_alone_bounds() -> None:
    adm = cpu.Admission(1, stalled=None)
    assert all(adm.enter() for _ in range(50))
    gone = cpu.Admission(1, stalled=lambda: None)  # the file vanished meanwhile
    assert all(gone.enter() for _ in range(50))
    assert cpu.admission(adaptive=False).enter() and cpu.admission(adaptive=False).floor == 1


def test_the_services_admission_counts_cores() -> None:
    adm = cpu.admission()
    assert adm.floor == cpu.cores()
    assert all(adm.enter() for _ in range(adm.floor))


def test_wait_returns_when_a_place_is_given_back() -> None:
    clock = Clock()
    adm = cpu.Admission(1, stalled=lambda: clock.stalled, window=30.0, clock=lambda: clock.now)
    assert adm.enter()
    clock.step(100, 1.0)
    threading.Timer(0.1, adm.leave).start()
    t = time.monotonic()
    while not adm.enter():
        adm.wait()
    took = time.monotonic() - t
    print(f"waited {took:.3f} s for the place given back")
    assert took < 5.0, "wait() must wake on leave(), not sleep its window of 30 s"
