"""Homes: one home's state (its user or an admin), all homes and admin actions."""

from __future__ import annotations

from typing import Any

from hometier.errors import UsageError
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import recorded_failure
from hometier.service.api.base import BaseHandler
from hometier.state import HOME_STATES, queries

SORTS = {"user", "state", "hot_bytes", "stored_bytes", "last_activity", "state_since"}


def home_doc(h: Any, leases: list[Any] | None = None) -> dict[str, Any]:
    doc = {
        "user": h.user,
        "state": h.state,
        "state_since": h.state_since,
        "hot_bytes": h.hot_bytes,
        "hot_files": h.hot_files,
        "stored_bytes": h.stored_bytes,
        "last_activity": h.last_activity,
        "last_activity_source": h.last_activity_source,
        "exempt": h.exempt,
        "exempt_reason": h.exempt_reason,
        "error": h.error,
        "archived_at": h.archived_at,
        "restored_at": h.restored_at,
    }
    if leases is not None:
        doc["leases"] = [
            {"id": le.id, "holder": le.holder, "purpose": le.purpose, "expires_at": le.expires_at}
            for le in leases
        ]
    return doc


class HomeHandler(BaseHandler):
    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("read", user)

        admin = self.identity().is_admin

        def load() -> dict[str, Any]:
            home = queries.get_home(self.ctx.lc.db, user)
            doc = home_doc(home, queries.active_leases(self.ctx.lc.db, user, self.ctx.lc.now()))
            if not admin:
                # What a snapshot added to the bucket tells whether someone else already
                # stored the same files: dedup probing. Only admins see it.
                doc.pop("stored_bytes")
            failed = recorded_failure(self.ctx.lc, user) if home.state == "failed" else None
            if failed is not None:
                # The recorded error names paths and objects: the user gets its words.
                doc["error"] = failed.user_message() if not admin else home.error
                doc["reference"] = failed.ref
            elif not admin:
                doc["error"] = None
            return doc

        self.send(await self.blocking(load))


class HomesHandler(BaseHandler):
    async def get(self) -> None:
        self.identity().require("admin", None)
        state = self.get_query_argument("state", None)
        if state is not None and state not in HOME_STATES:
            raise UsageError(f"state must be one of {', '.join(HOME_STATES)}")
        q = (self.get_query_argument("q", "") or "").lower()
        sort = self.get_query_argument("sort", "user")
        desc = sort.startswith("-")
        if sort.lstrip("-") not in SORTS:
            raise UsageError(f"sort must be one of {', '.join(sorted(SORTS))} (- for descending)")
        try:
            limit = min(int(self.get_query_argument("limit", "500")), 5000)
            offset = max(int(self.get_query_argument("offset", "0")), 0)
        except ValueError:
            raise UsageError("limit and offset must be integers") from None

        def load() -> dict[str, Any]:
            homes = [h for h in queries.list_homes(self.ctx.lc.db, state) if q in h.user.lower()]
            key = sort.lstrip("-")
            homes.sort(key=lambda h: (getattr(h, key) is None, getattr(h, key) or 0), reverse=desc)
            page = homes[offset : offset + limit]
            return {"total": len(homes), "homes": [home_doc(h) for h in page]}

        self.send(await self.blocking(load))


class ArchiveHandler(BaseHandler):
    async def post(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("admin", user)
        result = await self.blocking(archive_home, self.ctx.lc, user)
        self.send(
            {
                "user": user,
                "outcome": result.outcome,
                "snapshot": result.snapshot,
                "reason": result.reason,
                "details": result.details,
                "bytes": result.bytes,
                "stored_bytes": result.stored_bytes,
            }
        )


class ExemptHandler(BaseHandler):
    async def put(self, user: str) -> None:
        await self._set(user, True)

    async def delete(self, user: str) -> None:
        await self._set(user, False)

    async def _set(self, user: str, exempt: bool) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("admin", user)
        reason = str(self.body().get("reason", ""))[:500] if exempt else None
        lc = self.ctx.lc

        def apply() -> Any:
            queries.get_or_create_home(
                lc.db, user, str(lc.layout.path(user)), lc.now(), actor=f"api:{who.name}"
            )
            return queries.set_exempt(lc.db, user, exempt, reason, f"api:{who.name}", lc.now())

        self.send(home_doc(await self.blocking(apply)))
