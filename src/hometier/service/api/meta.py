"""Health, metrics and the OpenAPI description."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from hometier.service.api.base import BaseHandler
from hometier.service.openapi import openapi


class HealthHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        def ping() -> None:
            with self.ctx.lc.db.transaction(write=False) as s:
                s.execute(text("SELECT 1"))

        await self.blocking(ping)
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
