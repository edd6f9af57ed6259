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
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from tornado.httpserver import HTTPServer

from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.loop import run_forever
from hometier.service.api.base import BaseHandler
from hometier.service.api.homes import ArchiveHandler, ExemptHandler, HomeHandler, HomesHandler
from hometier.service.api.leases import LeaseHandler, LeasesHandler
from hometier.service.api.meta import HealthHandler, MetricsHandler, OpenAPIHandler
from hometier.service.api.mounts import mount_routes
from hometier.service.api.restores import RestoredHandler, RestoreEventsHandler, RestoreHandler
from hometier.service.api.snapshots import DownloadHandler, SnapshotsHandler, TreeHandler
from hometier.service.dashboard import handlers as dash
from hometier.service.dashboard.mounts_pages import mount_pages
from hometier.service.dashboard.summary import Dashboard
from hometier.service.metrics import Metrics
from hometier.service.tracker import Tracker

log = logging.getLogger(__name__)

USER = r"(?P<user>[^/]+)"
SNAP = r"(?P<ref>[^/]+)"
MAX_BODY = 1024 * 1024


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
    mounts: Any = None
    """The bucket folders' ``MountManager`` (None: this service mounts nothing)."""
    sealer: Any = None
    """Seals bucket credentials when ``mounts`` is None (it holds its own otherwise)."""


class NotFoundHandler(BaseHandler):
    public = True

    def prepare(self) -> None:
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
        (rf"{p}/oauth_callback", HubOAuthCallbackHandler),
        # The dashboard (HTML, Hub OAuth login): hometier.service.dashboard.
        (rf"{p}/?", dash.OwnHomePage),
        (rf"{p}/admin", dash.AdminPage),
        (rf"{p}/homes/{USER}", dash.HomePage),
        (rf"{p}/homes/{USER}/(?P<action>archive|restore|exempt|unexempt)", dash.HomeAction),
        (rf"{p}/homes/{USER}/snapshots/{SNAP}/browse", dash.BrowsePage),
        (rf"{p}/static/(?P<path>.+)", dash.StaticHandler),
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
) -> ServiceContext:
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")
    downloads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="download")
    # Restores get their own threads: a login storm never waits behind API calls or
    # downloads, and they never wait behind it.
    restores = ThreadPoolExecutor(
        max_workers=max(1, restore_concurrency), thread_name_prefix="restore"
    )
    metrics = Metrics(lc)
    lc.on_archive = metrics.archived  # the loop's archives and the API's alike
    tracker = Tracker(lc, restores, on_finish=metrics.restored)
    return ServiceContext(
        lc, executor, downloads, tracker, metrics, prefix, service_name, metrics_public
    )


def make_app(
    ctx: ServiceContext, *, cookie_secret: bytes | None = None, config: Any = None
) -> web.Application:
    # A short cache: a revoked or expired token (the one-spawn token included) stops
    # working within seconds. (0 would mean "cache forever" to HubAuth.)
    auth = HubOAuth.instance(cache_max_age=5)
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
) -> None:
    """Serve the API on ``ip:port`` and, unless ``interval`` is None, run the archiver
    loop in a thread beside it. Returns on SIGTERM/SIGINT after both have stopped."""
    ctx = make_context(
        lc, prefix=prefix, metrics_public=metrics_public, restore_concurrency=restore_concurrency
    )
    stop = threading.Event()
    mounts_thread = _start_mounts(ctx, lc, config, stop)
    loop_thread = None
    if interval is not None:
        loop_thread = threading.Thread(
            target=run_forever, args=(lc, interval, stop), name="archiver", daemon=True
        )
        loop_thread.start()

    async def main() -> None:
        app = make_app(ctx, config=config)
        server = HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=120)
        server.listen(port, address=ip)
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
        if loop_thread is not None:
            loop_thread.join(timeout=60)
        if mounts_thread is not None:
            mounts_thread.join(timeout=60)
        for pool in (ctx.executor, ctx.downloads, ctx.tracker.executor):
            pool.shutdown(wait=False, cancel_futures=True)


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
