"""Homes: one home's state (its user or an admin), all homes and admin actions."""

from __future__ import annotations

from typing import Any

from hometier.errors import UsageError
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import recorded_failure
from hometier.service.api.base import BaseHandler
from hometier.state import HOME_STATES, listing, queries


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


def listing_args(handler: Any, default_limit: int = 100) -> dict[str, Any]:
    """The listing's query arguments (``state``, ``q``, ``sort`` with an optional ``-``
    or ``order=asc|desc``, ``limit``, ``cursor`` or ``offset``), checked."""
    state = handler.get_query_argument("state", None) or None
    if state is not None and state not in HOME_STATES:
        raise UsageError(f"state must be one of {', '.join(HOME_STATES)}")
    sort = handler.get_query_argument("sort", "user") or "user"
    desc = sort.startswith("-")
    sort = sort.lstrip("-")
    order = handler.get_query_argument("order", None)
    if order is not None:
        if order not in ("asc", "desc"):
            raise UsageError("order must be asc or desc")
        desc = order == "desc"
    if sort not in listing.SORTS:
        raise UsageError(f"sort must be one of {', '.join(listing.SORTS)} (- for descending)")
    try:
        limit = int(handler.get_query_argument("limit", str(default_limit)))
        offset = int(handler.get_query_argument("offset", "0"))
    except ValueError:
        raise UsageError("limit and offset must be integers") from None
    if not 1 <= limit <= listing.MAX_LIMIT:
        raise UsageError(f"limit must be between 1 and {listing.MAX_LIMIT}")
    if offset < 0:
        raise UsageError("offset must not be negative")
    cursor = handler.get_query_argument("cursor", None) or None
    if cursor is not None and offset:
        raise UsageError("give cursor or offset, not both")
    q = (handler.get_query_argument("q", "") or "").strip()[:255]
    return dict(state=state, q=q, sort=sort, desc=desc, limit=limit, offset=offset, cursor=cursor)


class HomesHandler(BaseHandler):
    """``GET /api/homes``: one page of homes, filtered, sorted and paged by the database."""

    async def get(self) -> None:
        self.identity().require("admin", None)
        args = listing_args(self, default_limit=500)

        def load() -> dict[str, Any]:
            page = listing.page_homes(self.ctx.lc.db, **args)
            homes = []
            for row in page.rows:
                doc = home_doc(row.home)
                doc["size"] = row.size
                homes.append(doc)
            return {
                "total": page.total,
                "homes": homes,
                "next_cursor": page.next_cursor,
                "limit": args["limit"],
            }

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
