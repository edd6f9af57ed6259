"""Health, metrics and the OpenAPI description."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from hometier.service.api.base import BaseHandler
from hometier.service.openapi import openapi
from hometier.service.outages import StateUnavailable, stand_in


class HealthHandler(BaseHandler):
    """``{"status": "ok"}``, or 503 ``{"status": "unavailable", "database":
    "unreachable", ...}`` with ``Retry-After`` while the state database is down (the
    service can then answer nothing that needs it)."""

    public = True

    async def get(self) -> None:
        def ping() -> None:
            with self.ctx.lc.db.transaction(write=False) as s:
                s.execute(text("SELECT 1"))

        try:
            await self.blocking(ping)
        except Exception as exc:
            down = stand_in(exc)
            if not isinstance(down, StateUnavailable):
                raise
            self.log_exception(type(down), down, None)
            doc = self.error_doc(down)
            doc.update(status="unavailable", database="unreachable")
            self.send(doc, status=503)
            return
        self.send({"status": "ok"})


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
