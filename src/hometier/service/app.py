"""The tornado application and ``run_service``: the API beside the archiver loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from sqlalchemy import text
from tornado import web
from tornado.httpserver import HTTPServer

from hometier import cpu
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.loop import run_forever
from hometier.notify import Notifier
from hometier.repo.config import CONFIG_KEY
from hometier.service.api import spaces as spaces_api
from hometier.service.api.base import BaseHandler
from hometier.service.api.homes import ArchiveHandler, ExemptHandler, HomeHandler, HomesHandler
from hometier.service.api.jobs import job_routes
from hometier.service.api.leases import LeaseHandler, LeasesHandler
from hometier.service.api.meta import HealthHandler, MetricsHandler, OpenAPIHandler
from hometier.service.api.mounts import mount_routes
from hometier.service.api.restores import RestoredHandler, RestoreEventsHandler, RestoreHandler
from hometier.service.api.snapshots import DownloadHandler, SnapshotsHandler, TreeHandler
from hometier.service.auth import hub_auth_defaults
from hometier.service.dashboard import handlers as dash
from hometier.service.dashboard import jobs_pages, spaces_pages
from hometier.service.dashboard.archives import BackgroundArchives
from hometier.service.dashboard.mounts_pages import mount_pages
from hometier.service.dashboard.preview import PreviewImage, PreviewPage
from hometier.service.dashboard.summary import Dashboard
from hometier.service.lookups import HomeLookup
from hometier.service.metrics import Metrics
from hometier.service.notices import archive_notice, chain, restore_notice
from hometier.service.outages import HealthCheck
from hometier.service.tracker import Tracker
from hometier.store import open_store
from hometier.store.base import Retry

log = logging.getLogger(__name__)

USER = r"(?P<user>[^/]+)"
SNAP = r"(?P<ref>[^/]+)"
MAX_BODY = 1024 * 1024
LISTEN_BACKLOG = 2048
"""Connections the kernel queues before the service accepts them (capped by
``net.core.somaxconn``). tornado's default, 128, is less than a class logging in at once:
the rest of a 500-login storm had their handshakes dropped and retried after 1 s, 3 s, …
(or reset), which is where its time to be accepted went."""


@dataclass
class ServiceContext:
    """What every handler reaches through ``self.ctx``."""

    lc: Lifecycle
    executor: ThreadPoolExecutor
    """Short blocking calls of request handlers (database, small repository reads)."""
    downloads: ThreadPoolExecutor
    """Producers of downloads (a slow client must not starve logins)."""
    tracker: Tracker
    metrics: Metrics
    prefix: str
    service_name: str = "hometier"
    metrics_public: bool = False
    spaces: Any = None
    """Shared spaces (``hometier.spaces.context.SpacesContext``), or None when off."""
    jobs: Any = None
    """``hometier.jobs.context.JobsContext``, or None when jobs are disabled."""
    scheduler: Any = None
    health: HealthCheck | None = None
    """The database and the store, probed with a timeout, cached (``/health``, banner)."""
    archives: Any = None
    """Archives started from the dashboard, running in the background."""
    notifier: Any = None
    """Tells admins and users what happened (``hometier.notify``)."""
    mounts: Any = None
    """The bucket folders' ``MountManager`` (None: this service mounts nothing)."""
    sealer: Any = None
    """Seals bucket credentials when ``mounts`` is None (it holds its own otherwise)."""
    homes: Any = None
    """Home rows for request handlers, read many at a time (``service.lookups``)."""


class NotFoundHandler(BaseHandler):
    public = True

    async def prepare(self) -> None:
        raise web.HTTPError(404, "no such endpoint")


def routes(prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    p = prefix.rstrip("/")
    return [
        (rf"{p}/health", HealthHandler),
        (rf"{p}/metrics", MetricsHandler),
        (rf"{p}/api/openapi.json", OpenAPIHandler),
        (rf"{p}/api/homes", HomesHandler),
        (rf"{p}/api/homes/{USER}", HomeHandler),
        (rf"{p}/api/homes/{USER}/restore", RestoreHandler),
        (rf"{p}/api/homes/{USER}/restore/events", RestoreEventsHandler),
        (rf"{p}/api/homes/{USER}/restored", RestoredHandler),
        (rf"{p}/api/homes/{USER}/leases", LeasesHandler),
        (rf"{p}/api/homes/{USER}/leases/(?P<lease_id>[^/]+)", LeaseHandler),
        (rf"{p}/api/homes/{USER}/archive", ArchiveHandler),
        (rf"{p}/api/homes/{USER}/exempt", ExemptHandler),
        (rf"{p}/api/homes/{USER}/snapshots", SnapshotsHandler),
        (rf"{p}/api/homes/{USER}/snapshots/{SNAP}/tree", TreeHandler),
        (rf"{p}/api/homes/{USER}/snapshots/{SNAP}/(?P<kind>file|archive)", DownloadHandler),
        *spaces_api.routes(p),
        *job_routes(p),
        (rf"{p}/oauth_callback", HubOAuthCallbackHandler),
        # The dashboard (HTML, Hub OAuth login): hometier.service.dashboard.
        (rf"{p}/?", dash.OwnHomePage),
        (rf"{p}/admin", dash.AdminPage),
        (rf"{p}/homes/{USER}", dash.HomePage),
        (rf"{p}/homes/{USER}/(?P<action>archive|restore|exempt|unexempt)", dash.HomeAction),
        (rf"{p}/homes/{USER}/snapshots/{SNAP}/browse", dash.BrowsePage),
        *jobs_pages.routes(p),
        (rf"{p}/homes/{USER}/snapshots/{SNAP}/preview", PreviewPage),
        (rf"{p}/homes/{USER}/snapshots/{SNAP}/image", PreviewImage),
        (rf"{p}/static/(?P<path>.+)", dash.StaticHandler),
        *spaces_pages.routes(p),
        *mount_routes(p),
        *mount_pages(p),
    ]


def make_context(
    lc: Lifecycle,
    *,
    prefix: str,
    workers: int = 16,
    metrics_public: bool = False,
    service_name: str = "hometier",
    restore_concurrency: int = 8,
    adaptive_restores: bool = True,
    config: Any = None,
    notifier: Notifier | None = None,
) -> ServiceContext:
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")
    downloads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="download")
    # Restores get their own threads: a login storm never waits behind API calls or
    # downloads, and they never wait behind it.
    restores = ThreadPoolExecutor(
        max_workers=max(1, restore_concurrency), thread_name_prefix="restore"
    )
    metrics = Metrics(lc)
    notifier = notifier or Notifier(config=config)
    # The loop's archives, the API's and the dashboard's alike.
    lc.on_archive = chain(metrics.archived, partial(archive_notice, notifier))
    tracker = Tracker(
        lc,
        restores,
        on_finish=chain(metrics.restored, partial(restore_notice, notifier)),
        admission=cpu.admission(adaptive_restores),
    )
    metrics.watch(tracker)
    ctx = ServiceContext(
        lc, executor, downloads, tracker, metrics, prefix, service_name, metrics_public
    )
    ctx.health = make_health(lc)
    ctx.notifier = notifier
    ctx.archives = BackgroundArchives(lc)
    ctx.homes = HomeLookup(lc.db, executor)
    return ctx


def make_health(lc: Lifecycle) -> HealthCheck:
    def database() -> None:
        with lc.db.transaction(write=False) as s:
            s.execute(text("SELECT 1"))

    # The probe's own store, without hometier's retries: a health check must say "down"
    # within its timeout and be ready to say "up" again soon after the store is back.
    try:
        probe = open_store(lc.repo.store.url, retry=Retry(attempts=1))
    except Exception:  # noqa: BLE001 - the repository's store works as a probe too
        probe = lc.repo.store

    def store() -> None:
        probe.head(CONFIG_KEY)

    return HealthCheck({"database": database, "store": store})


def make_app(
    ctx: ServiceContext, *, cookie_secret: bytes | None = None, config: Any = None
) -> web.Application:
    # A short cache: a revoked or expired Hub token stops working within seconds (0
    # would mean "cache forever" to HubAuth). A login storm does not go through it: spawn
    # hooks send restore tickets, checked here without the Hub (hometier.tickets).
    hub = ctx.lc.hub
    auth = HubOAuth.instance(
        cache_max_age=5,
        **hub_auth_defaults(ctx.prefix, hub.api_url if hub else "", hub.token if hub else ""),
    )
    return web.Application(
        routes(ctx.prefix),
        hometier=ctx,
        hub_auth=auth,
        cookie_secret=cookie_secret or os.urandom(32),
        xsrf_cookies=False,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        hometier_dashboard=Dashboard(config=config) if config is not None else None,
    )


def run_service(
    lc: Lifecycle,
    *,
    ip: str,
    port: int,
    prefix: str,
    interval: dt.timedelta | None,
    metrics_public: bool = False,
    config: Any = None,
    restore_concurrency: int = 8,
    adaptive_restores: bool = True,
    spaces: Any = None,
    spaces_interval: float = 0.0,
) -> None:
    """Serve the API on ``ip:port`` and, unless ``interval`` is None, run the archiver
    loop in a thread beside it; with ``spaces``, their reconcile loop every
    ``spaces_interval`` seconds too. Returns on SIGTERM/SIGINT after all have stopped."""
    ctx = make_context(
        lc,
        prefix=prefix,
        metrics_public=metrics_public,
        restore_concurrency=restore_concurrency,
        adaptive_restores=adaptive_restores,
        config=config,
    )
    ctx.spaces = spaces
    scheduler = _start_jobs(ctx, config)
    stop = threading.Event()
    mounts_thread = _start_mounts(ctx, lc, config, stop)
    loop_thread = None
    if interval is not None:
        loop_thread = threading.Thread(
            target=run_forever, args=(lc, interval, stop), name="archiver", daemon=True
        )
        loop_thread.start()
    spaces_thread = None
    if spaces is not None and spaces_interval > 0:
        from hometier.spaces.reconcile import run_forever as reconcile_forever

        spaces_thread = threading.Thread(
            target=reconcile_forever,
            args=(spaces, spaces_interval, stop),
            name="spaces",
            daemon=True,
        )
        spaces_thread.start()

    async def main() -> None:
        app = make_app(ctx, config=config)
        server = HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=120)
        server.listen(port, address=ip, backlog=LISTEN_BACKLOG)
        log.info("hometier service on http://%s:%d%s", ip, port, prefix)
        done = asyncio.Event()
        aloop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            aloop.add_signal_handler(sig, done.set)
        await done.wait()
        server.stop()
        await server.close_all_connections()

    try:
        asyncio.run(main())
    finally:
        stop.set()
        if scheduler is not None:
            scheduler.stop()
        if loop_thread is not None:
            loop_thread.join(timeout=60)
        if spaces_thread is not None:
            spaces_thread.join(timeout=60)
        if mounts_thread is not None:
            mounts_thread.join(timeout=60)
        for pool in (ctx.executor, ctx.downloads, ctx.tracker.executor):
            pool.shutdown(wait=False, cancel_futures=True)
        ctx.archives.close()
        if ctx.health is not None:
            ctx.health.close()
        ctx.notifier.close(wait=False)


def _start_jobs(ctx: ServiceContext, config: Any) -> Any:
    """The jobs scheduler beside the API (hometier.jobs), when configured."""
    if config is None:
        return None
    from hometier.jobs.context import make_jobs_context
    from hometier.jobs.scheduler import Scheduler

    ctx.jobs = make_jobs_context(config, ctx.lc)
    if ctx.jobs is None:
        log.info("jobs are disabled (c.Jobs.enabled, or no Hub API configured)")
        return None
    ctx.scheduler = Scheduler(ctx.jobs)
    ctx.scheduler.start()
    return ctx.scheduler


def _start_mounts(
    ctx: ServiceContext, lc: Lifecycle, config: Any, stop: threading.Event
) -> threading.Thread | None:
    """Bucket folders: the manager for the API, and its check loop (adopting at once
    what an earlier run left mounted). Without root nothing is mounted here."""
    if config is None:
        return None
    from hometier.mounts.setup import make_manager, run_checks

    mgr, settings = make_manager(config, lc.db)
    if not settings.enabled or os.geteuid() != 0:
        ctx.mounts = None
        ctx.sealer = mgr.sealer
        return None
    ctx.mounts = mgr
    thread = threading.Thread(
        target=run_checks, args=(mgr, settings.check_interval, stop), name="mounts", daemon=True
    )
    thread.start()
    return thread


__all__ = ["ServiceContext", "make_app", "make_context", "routes", "run_service"]
