"""``JobsContext``: what the scheduler and every run share, built once by the edges."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from hometier.crypto import Sealer
from hometier.jobs.hubapi import HubAPI
from hometier.jobs.notify import Notify, find_notifier
from hometier.lifecycle.context import Lifecycle


def default_worker() -> str:
    return f"jobs:{socket.gethostname()}:{os.getpid()}"


@dataclass
class JobsContext:
    lc: Lifecycle
    hub: HubAPI
    sealer: Sealer | None = None
    """None when no secret key is configured: jobs that name secrets are refused."""
    worker: str = field(default_factory=default_worker)
    notify: Notify = field(default_factory=find_notifier)
    poll: float = 15.0
    """Seconds between two looks for due jobs and queued runs."""
    heartbeat: float = 10.0
    stale_after: dt.timedelta = dt.timedelta(minutes=2)
    """A running run whose heartbeat is older belongs to a dead process."""
    activity_interval: float = 60.0
    """Seconds between two activity reports to the Hub for the run's server."""
    spawn_timeout: float = 300.0
    concurrency: int = 4
    max_source: int = 20 * 1024 * 1024
    max_output: int = 50 * 1024 * 1024
    min_interval: dt.timedelta = dt.timedelta(minutes=5)
    max_timeout: int = 24 * 3600
    max_retries: int = 10
    max_keep: int = 100
    kernel_name: str | None = None
    """The kernel to start; None: the server's default kernel."""
    notify_success: bool = False


def make_jobs_context(config: Any, lc: Lifecycle) -> JobsContext | None:
    """The jobs context from configuration, or None when jobs are disabled or no Hub API
    is configured (the API then says so)."""
    import urllib.parse

    from hometier.config import Archiver, Hometier, Jobs
    from hometier.crypto import NoSecretKey
    from hometier.lifecycle.units import parse_duration, parse_size

    jobs, arch = Jobs(config=config), Archiver(config=config)
    if not jobs.enabled or not arch.hub_api_url or not arch.hub_api_token:
        return None
    proxy = jobs.proxy_url
    if not proxy:
        u = urllib.parse.urlsplit(arch.hub_api_url)
        proxy = f"{u.scheme}://{u.netloc}"
    try:
        sealer: Sealer | None = Sealer.from_config(Hometier(config=config))
    except NoSecretKey:
        sealer = None

    def seconds(text: str) -> float:
        return parse_duration(text).total_seconds()

    return JobsContext(
        lc=lc,
        hub=HubAPI(arch.hub_api_url, arch.hub_api_token, proxy),
        sealer=sealer,
        poll=seconds(jobs.poll_interval),
        heartbeat=seconds(jobs.heartbeat),
        stale_after=parse_duration(jobs.stale_after),
        activity_interval=seconds(jobs.activity_interval),
        spawn_timeout=seconds(jobs.spawn_timeout),
        concurrency=max(1, jobs.concurrency),
        max_source=parse_size(jobs.max_source_size),
        max_output=parse_size(jobs.max_output_size),
        min_interval=parse_duration(jobs.min_interval),
        max_timeout=int(seconds(jobs.max_timeout)),
        kernel_name=jobs.kernel_name or None,
        notify_success=jobs.notify_success,
    )
