"""The service runs at most ``Service.restore_concurrency`` restores at once (a login
storm queues in arrival order behind them): the pool the tracker hands restores to is
that size, whatever the number of requests."""

from __future__ import annotations

import threading
import time

from traitlets.config import Config

from hometier.config import Service
from hometier.lifecycle.context import Lifecycle
from hometier.service.app import make_context


def _peak_concurrency(executor, jobs: int) -> tuple[int, list[int]]:
    running = 0
    peak = 0
    order: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            order.append(i)
        time.sleep(0.05)
        with lock:
            running -= 1

    for f in [executor.submit(job, i) for i in range(jobs)]:
        f.result(timeout=30)
    return peak, order


def test_the_restore_pool_follows_the_configuration(lifecycle: Lifecycle) -> None:
    cfg = Config()
    cfg.Service.restore_concurrency = 3
    svc = Service(config=cfg)
    ctx = make_context(lifecycle, prefix="/x", restore_concurrency=svc.restore_concurrency)
    try:
        peak, order = _peak_concurrency(ctx.tracker.executor, 12)
    finally:
        for ex in (ctx.executor, ctx.downloads, ctx.tracker.executor):
            ex.shutdown(wait=True)
    assert peak == 3
    assert order == sorted(order), "restores must start in arrival order"


def test_the_default_is_eight(lifecycle: Lifecycle) -> None:
    assert Service().restore_concurrency == 8
    ctx = make_context(lifecycle, prefix="/x")
    try:
        peak, _ = _peak_concurrency(ctx.tracker.executor, 20)
    finally:
        for ex in (ctx.executor, ctx.downloads, ctx.tracker.executor):
            ex.shutdown(wait=True)
    assert peak == 8
