"""Prometheus metrics: homes by state, bytes on each tier, store traffic, durations, failures.

Gauges that describe the homes are read from the database at scrape time (so every
replica reports the same truth); counters and histograms count what this process did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from hometier.lifecycle.context import Lifecycle
from hometier.state import HOME_STATES, Home

BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class _StateCollector:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    def collect(self) -> Iterator[Any]:
        homes = GaugeMetricFamily("hometier_homes", "Homes by lifecycle state.", labels=["state"])
        tier = GaugeMetricFamily(
            "hometier_bytes",
            "Bytes of homes on each tier (POSIX volume, object storage).",
            labels=["tier"],
        )
        counts = dict.fromkeys(HOME_STATES, 0)
        hot = cold = stored = 0
        with self.lc.db.transaction(write=False) as s:
            rows = s.execute(
                select(
                    Home.state, func.count(), func.sum(Home.hot_bytes), func.sum(Home.stored_bytes)
                ).group_by(Home.state)
            ).all()
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


class Metrics:
    def __init__(self, lc: Lifecycle) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(lc))
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

    def archived(self, result: Any, seconds: float | None = None) -> None:
        self.outcomes.labels("archive", result.outcome).inc()
        if result.outcome == "failed":
            self.failures.labels("archive", "error").inc()
        if seconds is not None:
            self.archive_seconds.observe(seconds)

    def restored(self, job: Any, result: Any) -> None:
        outcome = job.state if result is None else result.outcome
        self.outcomes.labels("restore", outcome).inc()
        if job.state == "failed":
            # The reason (storage, damaged, volume-full, database, ...): few label values.
            self.failures.labels("restore", getattr(job, "reason", None) or "error").inc()
        elif result is not None and job.finished:
            self.restore_seconds.labels(result.source or "none").observe(result.seconds)
