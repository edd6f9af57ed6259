"""Restores: request one (idempotent: a second request joins the first), poll, stream."""

from __future__ import annotations

import asyncio
import json

from tornado.iostream import StreamClosedError

from hometier.service.api.base import BaseHandler
from hometier.state import queries

KEEPALIVE = 15.0


class RestoreHandler(BaseHandler):
    async def post(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        await self.blocking(queries.get_home, self.ctx.lc.db, user)  # 404 for unknown users
        job, started = self.ctx.tracker.start(user, f"api:{who.name}")
        doc = job.doc()
        doc["joined"] = not started
        self.send(doc, status=202)

    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("restore", user)
        self.send(await self.blocking(self.ctx.tracker.state_doc, user))


class RestoreEventsHandler(BaseHandler):
    """Server-sent events: one ``progress`` event per change until done or failed."""

    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("restore", user)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        seq = -1
        idle = 0.0
        try:
            while True:
                job = self.ctx.tracker.get(user)
                doc = job.doc() if job else await self.blocking(self.ctx.tracker.state_doc, user)
                now_seq = job.seq if job else -2
                if now_seq != seq:
                    seq = now_seq
                    self.write(f"event: progress\ndata: {json.dumps(doc, default=str)}\n\n")
                    await self.flush()
                    idle = 0.0
                if doc.get("state") in ("done", "failed", "idle"):
                    break
                await asyncio.sleep(0.25)
                idle += 0.25
                if idle >= KEEPALIVE:
                    self.write(": keepalive\n\n")
                    await self.flush()
                    idle = 0.0
        except StreamClosedError:
            return
        self.finish()


class RestoredHandler(BaseHandler):
    """An init container unpacked the home into a per-user volume itself: record it, so
    the home is ``active`` again (its activity counts from now)."""

    async def post(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        lc = self.ctx.lc
        actor = f"volume:{who.name}"

        def mark() -> str:
            home = queries.get_home(lc.db, user)
            if home.state == "active":
                return "active"
            if queries.request_restore(lc.db, user, actor, lc.now()):
                queries.finish_restore(lc.db, user, actor, lc.now())
                return "active"
            return queries.get_home(lc.db, user).state

        self.send({"user": user, "state": await self.blocking(mark)})
