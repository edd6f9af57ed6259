"""The service's restore queue (``Tracker``): first come, first served, except that a
restore costing nothing (files on the volume, or still in the quarantine) may start
before earlier ones that must download — and no waiting restore is passed by more than
``overtake`` later ones. Downloads start only as the admission lets them (one per core,
more while the CPU has room); restores costing nothing are not held back. Real threads
and a real executor; the restore itself is replaced by a recorder (this is the queue's
test; restores are tested elsewhere), the CPU's pressure by a fake."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from hometier.cpu import Admission
from hometier.service.metrics import RestoreQueueCollector
from hometier.service.tracker import (
    LIGHT_BYTES,
    LIGHT_FILES,
    Job,
    Tracker,
    light_download,
    restore_cost,
)


class Recorder(Tracker):
    def __init__(self, workers: int, overtake: int, admission: Admission | None = None) -> None:
        super().__init__(
            lc=None,  # type: ignore[arg-type]
            executor=ThreadPoolExecutor(workers),
            overtake=overtake,
            admission=admission,
        )
        self.order: list[str] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def _run(self, job: Job, actor: str) -> None:
        with self.lock:
            self.order.append(job.user)
            self.running += 1
            self.peak = max(self.peak, self.running)
        if job.user.startswith("blocker"):
            self.gate.wait(10)
        with self.lock:
            self.running -= 1
        with self._lock:
            job.state, job.finished = "done", time.time()


def _drain(t: Recorder, n: int) -> None:
    t.gate.set()
    t.executor.shutdown(wait=True)
    assert len(t.order) == n


def test_first_come_first_served_among_equals() -> None:
    t = Recorder(workers=1, overtake=3)
    t.start("blocker", "x")
    for i in range(10):
        t.start(f"u{i}", "x", cost=1)
    _drain(t, 11)
    assert t.order == ["blocker"] + [f"u{i}" for i in range(10)]


def test_cheap_restores_overtake_but_only_a_bounded_number_of_times() -> None:
    t = Recorder(workers=1, overtake=3)
    t.start("blocker", "x")
    time.sleep(0.05)  # the blocker holds the only slot
    t.start("big1", "x", cost=1)
    t.start("big2", "x", cost=1)
    for i in range(8):
        t.start(f"cheap{i}", "x", cost=0)
    waiting = {u: t.get(u).ahead for u in ("big1", "big2", "cheap7")}
    _drain(t, 11)
    order = t.order[1:]
    print("order:", order)
    # big1 is passed by exactly 3 cheap ones, then starts; so is big2, after it.
    assert order[:4] == ["cheap0", "cheap1", "cheap2", "big1"]
    assert order.index("big2") == 4
    assert order[5:] == [f"cheap{i}" for i in range(3, 8)]
    for user in ("big1", "big2"):
        assert t.get(user).overtaken <= 3
    assert waiting == {"big1": 0, "big2": 1, "cheap7": 9}


def test_a_second_request_joins_a_waiting_restore() -> None:
    t = Recorder(workers=1, overtake=3)
    t.start("blocker", "x")
    job, started = t.start("alice", "x", cost=5)
    again, started_again = t.start("alice", "y", cost=5)
    assert started and not started_again and again is job
    assert job.queued and job.doc()["queued"] is True
    assert "cost" not in job.doc() and "actor" not in job.doc()
    _drain(t, 2)
    assert t.order == ["blocker", "alice"]


def test_what_a_restore_costs() -> None:
    home = SimpleNamespace(state="active", quarantine_path=None, hot_bytes=5)
    assert restore_cost(home) == 0
    home.state = "archived"
    assert restore_cost(home) == 1
    home.quarantine_path = "/nonexistent/quarantine"
    assert restore_cost(home) == 1
    home.quarantine_path = "/"
    assert restore_cost(home) == 0
    # Downloads are equals whatever their size: they keep their arrival order.
    home.quarantine_path, home.hot_bytes = None, 10**12
    assert restore_cost(home) == 1


def test_which_downloads_are_light() -> None:
    home = SimpleNamespace(hot_files=41, hot_bytes=200_000)
    assert light_download(home)
    home.hot_files = LIGHT_FILES + 1
    assert not light_download(home), "many files: CPU to create them"
    home.hot_files, home.hot_bytes = 10, LIGHT_BYTES + 1
    assert not light_download(home), "many bytes: CPU to decompress and verify them"
    home.hot_files, home.hot_bytes = 0, 0
    assert not light_download(home), "a home of unknown size is not light"
    home.hot_files, home.hot_bytes = None, None
    assert not light_download(home)


def _saturated() -> Admission:
    """One download at a time: the CPU never has room (every task always waited)."""
    return Admission(1, stalled=time.monotonic, window=0.01)


def test_downloads_wait_for_the_admission_while_cheap_restores_go_by() -> None:
    t = Recorder(workers=4, overtake=8, admission=_saturated())
    t.start("blocker", "x", cost=1)
    time.sleep(0.05)
    for user in ("big1", "big2"):
        t.start(user, "x", cost=1)
    for i in range(3):
        t.start(f"cheap{i}", "x", cost=0)
    deadline = time.monotonic() + 5
    while len(t.order) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    held = (list(t.order), t.get("big1").queued, t.get("big2").queued)
    scraped = {
        sample.labels["state"]: sample.value
        for family in RestoreQueueCollector(t).collect()
        for sample in family.samples
    }
    _drain(t, 6)
    print("while the blocker downloaded:", held[0], "then:", t.order[4:])
    # Three pool threads were free, but the one download place was the blocker's.
    assert held == (["blocker", "cheap0", "cheap1", "cheap2"], True, True)
    assert t.order[4:] == ["big1", "big2"], "held-back downloads keep their arrival order"
    assert scraped == {"waiting": 2, "downloading": 1}
    assert t.admission.peak == 1 and t.admission.running == 0


def test_downloads_go_beyond_one_per_core_while_the_cpu_has_room() -> None:
    room = Admission(1, stalled=lambda: 0.0, window=0.01)
    t = Recorder(workers=4, overtake=8, admission=room)
    for i in range(6):
        t.start(f"blocker{i}", "x", cost=1)
    deadline = time.monotonic() + 5
    while t.peak < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    peak = t.peak
    _drain(t, 6)
    assert peak == 4, "with room, the pool's 4 threads all download"
    assert t.order == [f"blocker{i}" for i in range(6)]


def _small_ones_behind_a_held_download(overtake: int, small: int) -> Recorder:
    """A blocker downloading (the one place), ``big`` waiting for the admission behind
    it, then ``small`` light downloads; returns once three restores have started (or
    after 5 s) and the queue has had a moment to settle."""
    t = Recorder(workers=4, overtake=overtake, admission=_saturated())
    t.start("blocker", "x", cost=1)
    time.sleep(0.05)
    t.start("big", "x", cost=1)
    for i in range(small):
        t.start(f"small{i}", "x", cost=1, light=True)
    deadline = time.monotonic() + 5
    while len(t.order) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    return t


def test_light_downloads_do_not_wait_for_the_admission() -> None:
    t = _small_ones_behind_a_held_download(overtake=8, small=2)
    held = (list(t.order), t.get("big").queued)
    _drain(t, 4)
    print("while the blocker downloaded:", held[0], "then:", t.order[3:])
    # The heavy one waits for the one download place; the small ones, behind it in the
    # queue, do not wait for it (the head gives way: it could not start anyway).
    assert held == (["blocker", "small0", "small1"], True)
    assert t.order[3:] == ["big"]
    assert t.admission.peak == 1 and t.admission.running == 0
    assert "light" not in t.get("big").doc()


def test_light_downloads_pass_a_held_download_a_bounded_number_of_times() -> None:
    t = _small_ones_behind_a_held_download(overtake=2, small=4)
    held = list(t.order), t.get("big").overtaken, t.get("small2").queued
    _drain(t, 6)
    print("while the blocker downloaded:", held[0], "then:", t.order[3:])
    assert held == (["blocker", "small0", "small1"], 2, True)
    assert set(t.order[3:]) == {"big", "small2", "small3"}


def test_the_gauge_counts_light_downloads_too() -> None:
    t = Recorder(workers=3, overtake=8, admission=_saturated())
    t.start("blocker", "x", cost=1)
    t.start("blocker-small", "x", cost=1, light=True)
    t.start("blocker-on-the-volume", "x", cost=0)
    deadline = time.monotonic() + 5
    while t.running < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    scraped = {
        sample.labels["state"]: sample.value
        for family in RestoreQueueCollector(t).collect()
        for sample in family.samples
    }
    admitted = t.admission.running
    _drain(t, 3)
    assert scraped == {"waiting": 0, "downloading": 2} and admitted == 1
    assert t.downloading() == 0


def test_a_light_download_wakes_threads_waiting_for_the_admission() -> None:
    """Every pool thread waits for a place (one long window): a small home arriving then
    starts at once, not at the threads' next look."""
    t = Recorder(workers=2, overtake=8, admission=Admission(1, stalled=time.monotonic, window=30))
    t.start("blocker", "x", cost=1)
    t.start("big", "x", cost=1)
    time.sleep(0.2)  # the second thread is waiting for the admission's window
    began = time.monotonic()
    t.start("small", "x", cost=1, light=True)
    deadline = began + 10
    while "small" not in t.order and time.monotonic() < deadline:
        time.sleep(0.01)
    waited = time.monotonic() - began
    t.gate.set()
    t.admission.wake()
    t.executor.shutdown(wait=False, cancel_futures=True)
    print(f"the small home started {waited:.3f} s after it arrived")
    assert waited < 5, "it waited for the window, not for a thread"


def test_a_light_download_waits_its_turn_for_a_pool_thread() -> None:
    t = Recorder(workers=1, overtake=8, admission=_saturated())
    t.start("blocker", "x")
    time.sleep(0.05)
    t.start("big", "x", cost=1)
    t.start("small", "x", cost=1, light=True)
    _drain(t, 3)
    assert t.order == ["blocker", "big", "small"], "light is not cheap: no overtaking"


def test_a_failing_restore_gives_its_place_back() -> None:
    class Failing(Recorder):
        def _run(self, job: Job, actor: str) -> None:
            super()._run(job, actor)
            raise RuntimeError("the restore's own handler failed")

    t = Failing(workers=2, overtake=8, admission=_saturated())
    for i in range(3):
        t.start(f"u{i}", "x", cost=1)
    _drain(t, 3)
    assert t.order == ["u0", "u1", "u2"] and t.admission.running == 0
