"""Prometheus metrics: homes by state, bytes on each tier, store traffic, durations, failures.

Gauges that describe the homes are read from the database (so every replica reports the
same truth) by aggregate statements, at most once per ``CACHE_SECONDS`` and at once after
an archive or restore of this process; counters and histograms count what this process
did. A scrape also keeps today's row of the daily rollup the dashboard's chart reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select, text

from hometier.lifecycle.context import Lifecycle
from hometier.state import HOME_STATES, Home, listing

BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


CACHE_SECONDS = 10.0
"""How long the homes' gauges are reused: a scrape storm reads the database once per
this long (and a change this process makes refreshes them at once)."""
ROLLUP_SECONDS = 300.0
"""How often a scrape records today's totals in the daily rollup the chart reads."""


class _StateCollector:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self._lock = threading.Lock()
        self._cached: tuple[float, Any] | None = None
        self._rolled = 0.0

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _read(self) -> tuple[list[Any], listing.TierTotals]:
        # Two grouped statements over the homes and one sum over the snapshots: the
        # database aggregates, nothing is read row by row.
        with self.lc.db.transaction(write=False) as s:
            rows = s.execute(
                select(
                    Home.state, func.count(), func.sum(Home.hot_bytes), func.sum(Home.stored_bytes)
                ).group_by(Home.state)
            ).all()
        totals = listing.tier_totals(self.lc.db)
        now = time.monotonic()
        if now - self._rolled >= ROLLUP_SECONDS:
            self._rolled = now
            listing.record_tier_day(self.lc.db, totals, self.lc.now())
        return list(rows), totals

    def read(self) -> tuple[list[Any], listing.TierTotals]:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                # Cached numbers, but never over an outage: a scrape while the database
                # is down must fail (503), not repeat the last figures.
                with self.lc.db.transaction(write=False) as s:
                    s.execute(text("SELECT 1"))
                return cast("tuple[list[Any], listing.TierTotals]", self._cached[1])
            value = self._read()
            self._cached = (time.monotonic(), value)
            return value

    def collect(self) -> Iterator[Any]:
        homes = GaugeMetricFamily("hometier_homes", "Homes by lifecycle state.", labels=["state"])
        tier = GaugeMetricFamily(
            "hometier_bytes",
            "Bytes of homes on each tier (POSIX volume, object storage).",
            labels=["tier"],
        )
        counts = dict.fromkeys(HOME_STATES, 0)
        hot = cold = stored = 0
        rows, totals = self.read()
        for state, n, hot_sum, stored_sum in rows:
            counts[state] = n
            if state in ("active", "archiving", "restoring"):
                hot += int(hot_sum or 0)
            else:
                cold += int(hot_sum or 0)
            stored += int(stored_sum or 0)
        for state, n in counts.items():
            homes.add_metric([state], n)
        tier.add_metric(["posix"], hot)
        tier.add_metric(["archived_logical"], cold)
        tier.add_metric(["object_added"], stored)
        yield homes
        yield tier
        shown = GaugeMetricFamily(
            "hometier_tier_bytes",
            "Bytes as the dashboard's cards show them: hot (homes on the POSIX volume), "
            "archived (logical size of homes only in the bucket), stored (what every "
            "snapshot added to the bucket, after dedup and compression).",
            labels=["tier"],
        )
        shown.add_metric(["hot"], totals.hot_bytes)
        shown.add_metric(["archived"], totals.archived_bytes)
        shown.add_metric(["stored"], totals.stored_bytes)
        yield shown
        stats = self.lc.repo.store.stats.snapshot()
        reqs = CounterMetricFamily(
            "hometier_store_requests", "Requests to object storage by kind.", labels=["op"]
        )
        data = CounterMetricFamily(
            "hometier_store_bytes", "Bytes moved to and from object storage.", labels=["op"]
        )
        for op, n in stats["requests"].items():
            reqs.add_metric([op], n)
        for op, n in stats["bytes"].items():
            data.add_metric([op], n)
        yield reqs
        yield data
        retries = CounterMetricFamily("hometier_store_retries", "Retried store requests.")
        retries.add_metric([], stats["retries"])
        yield retries


class RestoreQueueCollector:
    """This process's restore queue at the scrape: logins waiting (for a pool thread, or
    held back while the CPU has no room) and restores downloading a home."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Any]:
        restores = GaugeMetricFamily(
            "hometier_restores",
            "Restores of this process: waiting to start, and downloading a home (one per "
            "core, more while the CPU has room; small homes whenever a thread is free).",
            labels=["state"],
        )
        restores.add_metric(["waiting"], self.tracker.waiting())
        restores.add_metric(["downloading"], self.tracker.downloading())
        yield restores


class Metrics:
    def __init__(self, lc: Lifecycle) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.state = _StateCollector(lc)
        self.registry.register(self.state)
        self.restore_seconds = Histogram(
            "hometier_restore_seconds",
            "Time to restore a home.",
            ["source"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.archive_seconds = Histogram(
            "hometier_archive_seconds",
            "Time to archive a home.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "hometier_operations",
            "Archives and restores by outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "hometier_failures",
            "Failed operations by kind of error.",
            ["operation", "kind"],
            registry=self.registry,
        )

    def watch(self, tracker: Any) -> None:
        """Report ``tracker``'s queue (``hometier_restores``) at every scrape."""
        self.registry.register(RestoreQueueCollector(tracker))

    def totals(self) -> listing.TierTotals:
        """The homes' totals, shared with the gauges: at most ``CACHE_SECONDS`` old, and
        fresh after an archive or restore of this process."""
        return self.state.read()[1]

    def archived(self, result: Any, seconds: float | None = None) -> None:
        self.state.invalidate()
        self.outcomes.labels("archive", result.outcome).inc()
        if result.outcome == "failed":
            self.failures.labels("archive", "error").inc()
        if seconds is not None:
            self.archive_seconds.observe(seconds)

    def restored(self, job: Any, result: Any) -> None:
        self.state.invalidate()
        outcome = job.state if result is None else result.outcome
        self.outcomes.labels("restore", outcome).inc()
        if job.state == "failed":
            # The reason (storage, damaged, volume-full, database, ...): few label values.
            self.failures.labels("restore", getattr(job, "reason", None) or "error").inc()
        elif result is not None and job.finished:
            self.restore_seconds.labels(result.source or "none").observe(result.seconds)
