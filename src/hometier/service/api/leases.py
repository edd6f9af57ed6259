"""Leases: other consumers of a home (jobs, extra servers) keep it restored and unarchived."""

from __future__ import annotations

from typing import Any

from hometier.errors import NotFound, UsageError
from hometier.lifecycle.units import parse_duration
from hometier.service.api.base import BaseHandler
from hometier.state import ARCHIVED, FAILED, RESTORING, queries

MAX_LEASE_SECONDS = 7 * 86400


def lease_doc(le: Any) -> dict[str, Any]:
    return {
        "id": le.id,
        "holder": le.holder,
        "purpose": le.purpose,
        "acquired_at": le.acquired_at,
        "expires_at": le.expires_at,
        "released_at": le.released_at,
    }


def _duration(doc: dict[str, Any]) -> Any:
    raw = doc.get("duration", "1h")
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise UsageError("duration must be like '2h' or a number of seconds")
    d = parse_duration(raw)
    if not 0 < d.total_seconds() <= MAX_LEASE_SECONDS:
        raise UsageError(f"duration must be between 1 second and {MAX_LEASE_SECONDS // 86400} days")
    return d


class LeasesHandler(BaseHandler):
    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("lease", user)
        leases = await self.blocking(queries.active_leases, self.ctx.lc.db, user, self.ctx.lc.now())
        self.send({"leases": [lease_doc(le) for le in leases]})

    async def post(self, user: str) -> None:
        """Acquire a lease; an archived home is restored at once (the lease says why)."""
        user = self.user_arg(user)
        who = self.identity()
        who.require("lease", user)
        doc = self.body()
        holder = str(doc.get("holder") or who.name)[:255]
        purpose = str(doc.get("purpose", ""))[:1000]
        duration = _duration(doc)
        lc = self.ctx.lc
        lease = await self.blocking(
            queries.acquire_lease, lc.db, user, holder, purpose, duration, lc.now()
        )
        home = await self.blocking(queries.get_home, lc.db, user)
        out = lease_doc(lease)
        if home.state in (ARCHIVED, RESTORING, FAILED):
            job, _ = self.ctx.tracker.start(user, f"lease:{holder}")
            out["restore"] = job.doc()
        self.send(out, status=201)


class LeaseHandler(BaseHandler):
    async def _owned(self, user: str, lease_id: str) -> str:
        user = self.user_arg(user)
        self.identity().require("lease", user)
        owner = await self.blocking(queries.lease_owner, self.ctx.lc.db, lease_id)
        if owner != user:
            raise LeaseNotHere(lease_id, user)
        return user

    async def put(self, user: str, lease_id: str) -> None:
        await self._owned(user, lease_id)
        duration = _duration(self.body())
        lc = self.ctx.lc
        lease = await self.blocking(queries.renew_lease, lc.db, lease_id, duration, lc.now())
        self.send(lease_doc(lease))

    async def delete(self, user: str, lease_id: str) -> None:
        await self._owned(user, lease_id)
        lc = self.ctx.lc
        released = await self.blocking(queries.release_lease, lc.db, lease_id, lc.now())
        self.send({"id": lease_id, "released": released})


class LeaseNotHere(NotFound):
    """No lease {} on the home of {}."""
