"""Health, metrics and the OpenAPI description."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hometier.errors import new_reference
from hometier.service.api.base import BaseHandler
from hometier.service.openapi import openapi
from hometier.service.outages import HealthCheck, StateUnavailable

log = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    """Is the service usable: the state database and object storage, each probed with a
    short timeout, the answer cached a few seconds (``outages.HealthCheck``).

    - both up: 200 ``{"status": "ok", "database": "ok", "store": "ok"}``;
    - object storage down: 200 ``{"status": "degraded", ..., "store": "unreachable"}``
      (the service still answers what needs only the database, and a liveness probe must
      not restart it for an outage it cannot fix);
    - the database down: 503 ``{"status": "unavailable", "database": "unreachable",
      ...}`` with ``Retry-After`` and a reference (the service can answer nothing).
    """

    public = True

    async def get(self) -> None:
        health: HealthCheck = self.ctx.health
        now = await self.blocking(health.check)
        db, store = now.part("database"), now.part("store")
        doc: dict[str, Any] = {}
        status = 200
        if not db.ok:
            down = StateUnavailable(new_reference(), db.detail)
            self.log_exception(type(down), down, None)
            doc = self.error_doc(down)
            status = 503
        elif not store.ok:
            log.warning("health: object storage is unreachable: %s", store.detail)
        doc.update(
            status="ok" if now.ok else "unavailable" if not db.ok else "degraded",
            database="ok" if db.ok else "unreachable",
            store="ok" if store.ok else "unreachable",
        )
        self.send(doc, status=status)


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        if not self.ctx.metrics_public:
            self.identity().require("admin", None)
        body = await self.blocking(generate_latest, self.ctx.metrics.registry)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


class OpenAPIHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        self.send(openapi(self.ctx.prefix))
