"""Restores: request one (idempotent: a second request joins the first), poll, stream."""

from __future__ import annotations

import asyncio
import json
import time

from tornado.iostream import StreamClosedError

from hometier.service.api.base import BaseHandler
from hometier.service.outages import stand_in
from hometier.service.tracker import light_download, restore_cost
from hometier.state import queries

KEEPALIVE = 15.0
QUEUED_EVERY = 2.0
"""A waiting restore's place in the queue is sent at most this often: in a storm every
start moves every waiting login up one, and 500 streams writing 4 times a second kept
the event loop (and the GIL) from the requests still to be accepted."""


class RestoreHandler(BaseHandler):
    async def post(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        # 404 for unknown users; what it costs decides whether it may overtake. The row is
        # read with the other logins' of the moment (one statement for a storm's worth).
        home = await self.ctx.homes.get(user)
        if home.state != "active" and home.quarantine_path:
            cost = await self.blocking(restore_cost, home)  # looks at the quarantine folder
        else:
            cost = restore_cost(home)
        job, started = self.ctx.tracker.start(
            user, f"api:{who.name}", cost, light=light_download(home)
        )
        doc = job.doc(who.is_admin)
        doc["joined"] = not started
        self.send(doc, status=202)

    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        self.send(await self.blocking(self.ctx.tracker.state_doc, user, who.is_admin))


class RestoreEventsHandler(BaseHandler):
    """Server-sent events: one ``progress`` event per change until done or failed."""

    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        admin = who.is_admin
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        seq = -1
        idle = 0.0
        queued_at = -QUEUED_EVERY  # when the last event that said "waiting" was sent
        try:
            while True:
                job = self.ctx.tracker.get(user)
                if job is not None and job.seq == seq and job.state == "running":
                    doc = None  # nothing new: no document to build (500 streams in a storm)
                elif (
                    job is not None
                    and job.queued
                    and seq >= 0
                    and time.monotonic() - queued_at < QUEUED_EVERY
                ):
                    doc = None  # only its place in the queue moved: tell it a little later
                elif job is not None:
                    doc = job.doc(admin)
                else:
                    try:
                        doc = await self.blocking(self.ctx.tracker.state_doc, user, admin)
                    except Exception as exc:
                        down = stand_in(exc)
                        if seq == -1 or down is None:
                            raise  # nothing sent yet: an error answer (503 for an outage)
                        # The stream is open: say so on it, then end it.
                        self.log_exception(type(down), down, None)
                        self.write(f"event: error\ndata: {json.dumps(self.error_doc(down))}\n\n")
                        break
                now_seq = job.seq if job else -2
                if doc is not None and now_seq != seq:
                    seq = now_seq
                    if doc.get("queued"):
                        queued_at = time.monotonic()
                    self.write(f"event: progress\ndata: {json.dumps(doc, default=str)}\n\n")
                    await self.flush()
                    idle = 0.0
                if doc is not None and doc.get("state") in ("done", "failed", "idle"):
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
