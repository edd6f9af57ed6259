"""The service's restore queue (``Tracker``): first come, first served, except that a
restore costing nothing (files on the volume, or still in the quarantine) may start
before earlier ones that must download — and no waiting restore is passed by more than
``overtake`` later ones. Real threads and a real executor; the restore itself is
replaced by a recorder (this is the queue's test; restores are tested elsewhere)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from hometier.service.tracker import Job, Tracker, restore_cost


class Recorder(Tracker):
    def __init__(self, workers: int, overtake: int) -> None:
        super().__init__(lc=None, executor=ThreadPoolExecutor(workers), overtake=overtake)  # type: ignore[arg-type]
        self.order: list[str] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def _run(self, job: Job, actor: str) -> None:
        with self.lock:
            self.order.append(job.user)
        if job.user == "blocker":
            self.gate.wait(10)
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
