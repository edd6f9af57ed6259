"""``/admin``: the overview of every home, built for 50,000 of them.

The table is one page (``PAGE`` rows) filtered, sorted and paged by the database
(``state.listing.page_homes``); the cards are aggregate statements; the chart reads one
row per day of the rollup. Nothing here loads every home or every event. The query
string is the page's state (``q``, ``state``, ``sort`` with ``-`` for descending,
``cursor``/``offset``, ``days``), so every view is a link.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from tornado import web

from hometier.errors import UsageError
from hometier.service.api.homes import listing_args
from hometier.service.dashboard.base import AdminOnly, PageHandler
from hometier.service.dashboard.explain import explain
from hometier.service.dashboard.summary import (
    RANGES,
    SERIES,
    day_points,
    make_chart,
    make_totals,
)
from hometier.state import HOME_STATES, listing, queries

log = logging.getLogger(__name__)

PAGE = 50
_rebuilding = threading.Lock()
"""Held while this process rebuilds the chart's past days in the background."""


def _rebuild(db: Any, first: dt.date, now: dt.datetime) -> None:
    """Rebuild the rollup's missing past days (seconds at 50,000 homes), once at a time."""
    try:
        missing = listing.missing_tier_days(db, first, now)
        n = listing.rebuild_missing_days(db, missing, now)
        log.info("rebuilt %d day(s) of the tier history from the event log", n)
    except Exception:  # noqa: BLE001 - the chart shows what it has; the next page tries again
        log.exception("rebuilding the tier history failed")
    finally:
        _rebuilding.release()


COLUMNS = (
    ("user", "User"),
    ("state", "State"),
    ("size", "Size"),
    (None, "Where"),
    ("stored_bytes", "Added to bucket"),
    ("last_activity", "Last activity"),
)


class AdminPage(PageHandler):
    """``/admin``: totals, costs, bytes per tier over time, one page of homes."""

    @web.authenticated
    async def get(self) -> None:
        who = self.identity()
        if not who.is_admin:
            raise AdminOnly(who.name)
        args = listing_args(self, default_limit=PAGE)
        prices = self.dashboard
        try:
            days = int(self.get_query_argument("days", str(prices.history_days)))
        except ValueError:
            raise UsageError(f"days must be one of {', '.join(map(str, RANGES))}") from None
        if days not in RANGES:
            raise UsageError(f"days must be one of {', '.join(map(str, RANGES))}")
        lc = self.ctx.lc
        now = lc.now()
        first = now.astimezone(dt.UTC).date() - dt.timedelta(days=days - 1)

        def load() -> dict[str, Any]:
            page = listing.page_homes(lc.db, **args)
            tier = self.ctx.metrics.totals()  # aggregates, shared with /metrics
            rows = listing.tier_days(lc.db, first, tier, now, rebuild=False)
            missing = listing.missing_tier_days(lc.db, first, now)
            if missing and _rebuilding.acquire(blocking=False):
                threading.Thread(
                    target=_rebuild, args=(lc.db, first, now), name="tier-history", daemon=True
                ).start()
            failed, n_failed = listing.failed_homes(lc.db, limit=20)
            errors = queries.events(lc.db, kind="error", limit=20, newest_first=True)
            leases = queries.active_lease_counts(lc.db, now)
            erred = [h.user for h in failed] + [r.home.user for r in page.rows if r.home.error]
            recorded = listing.last_errors(lc.db, sorted(set(erred)))
            return dict(
                page=page, tier=tier, rows=rows, failed=failed, n_failed=n_failed,
                errors=errors, leases=leases, rebuilding=bool(missing), recorded=recorded,
            )  # fmt: skip

        data = await self.blocking(load)
        health = await self.blocking(self.ctx.health.check) if self.ctx.health else None
        totals = make_totals(data["tier"], prices)
        sort = ("-" if args["desc"] else "") + args["sort"]

        def link(**change: Any) -> str:
            query = {"q": args["q"], "state": args["state"] or "", "sort": sort, "days": days}
            if args["limit"] != PAGE:
                query["limit"] = args["limit"]
            query.update(change)
            return self.url("admin", **{k: str(v) for k, v in query.items() if v not in ("", None)})

        page = data["page"]
        recorded = data["recorded"]
        offset = args["offset"]
        self.take_flash()
        self.render(
            "admin.html",
            totals=totals,
            chart=make_chart(day_points(data["rows"]), prices, days),
            series=SERIES,
            ranges=RANGES,
            days=days,
            errors=[(e, explain((e.detail or {}).get("error"), e.detail)) for e in data["errors"]],
            failed=[(h, explain(h.error, recorded.get(h.user))) for h in data["failed"]],
            n_failed=data["n_failed"],
            rows=[
                (r, explain(r.home.error, recorded.get(r.home.user)) if r.home.error else None)
                for r in page.rows
            ],
            total=page.total,
            first_row=offset + 1 if page.rows else 0,
            next_url=link(cursor=page.next_cursor) if page.next_cursor else None,
            first_url=link() if (args["cursor"] or offset) else None,
            leases=data["leases"],
            running={j.user: j for j in self.ctx.archives.running()} if self.ctx.archives else {},
            q=args["q"],
            state=args["state"] or "",
            sort=sort,
            states=HOME_STATES,
            columns=COLUMNS,
            link=link,
            health=health,
            rebuilding=data["rebuilding"],
        )


__all__ = ["PAGE", "AdminPage"]
