"""Verbs about one home's bookkeeping, which need only the state database: status,
exempt, lease (they work while the bucket is down)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from typing import Any

from rich.table import Table

from hometier.cli.output import emit_json, err, human, out, when
from hometier.config import Archiver, Hometier
from hometier.errors import NotFound, UsageError
from hometier.lifecycle.homes import check_username
from hometier.lifecycle.units import parse_duration

HOME_STATES = ("active", "archiving", "archived", "restoring", "failed")
"""``hometier.state.HOME_STATES``, spelt out so that parsing flags loads no database code
(a unit test keeps the two equal)."""


class NoSuchHome(NotFound):
    """No home of {}: there is no folder {} and hometier has never seen one (a typo?)."""


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="state of one home or of all (reads only the database)")
    p.add_argument("user", nargs="?", help="only this user's home, with its leases")
    p.add_argument("--state", choices=HOME_STATES, help="only homes in this state")
    p.add_argument("--search", default="", help="only homes whose user name contains this")
    p.add_argument(
        "--limit",
        type=int,
        help="at most this many homes (default: 100 in a table, all with --json)",
    )
    p.add_argument("--all", action="store_true", help="every home, however many")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("exempt", help="never archive a user's home (or --remove that)")
    p.add_argument("user", help="whose home (it must exist)")
    p.add_argument("--remove", action="store_true", help="archive it again like any other")
    p.add_argument("--reason", default="", help="why, for the record (shown by status)")
    p.set_defaults(handler=cmd_exempt)

    p = sub.add_parser("lease", help="hold a home hot for a while (jobs, extra servers)")
    p.add_argument("user", nargs="?", help="whose home (it must exist)")
    p.add_argument(
        "--for",
        dest="duration",
        default="1h",
        help="how long, with a unit: 90s, 30m, 2h, 1d, 1w (default 1h)",
    )
    p.add_argument("--holder", default="cli", help="who holds it (a job id, a host)")
    p.add_argument("--purpose", default="", help="why, for the record")
    p.add_argument("--release", metavar="LEASE_ID", help="release this lease instead")
    p.add_argument("--renew", metavar="LEASE_ID", help="renew this lease for --for")
    p.set_defaults(handler=cmd_lease)


def lease_duration(value: str) -> dt.timedelta:
    """``--for``: a duration with a unit; a bare number is refused rather than guessed."""
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        raise UsageError(
            f"--for {value.strip()}: give a unit, e.g. {value.strip()}h, "
            f"{value.strip()}m or {value.strip()}d"
        )
    duration = parse_duration(value)
    if duration.total_seconds() <= 0:
        raise UsageError(f"--for {value}: a lease must last some time")
    return duration


def _db(args: argparse.Namespace, cfg: Hometier) -> Any:
    """The state database alone: verbs that need no bucket work while it is down."""
    from hometier.app import open_bound_db

    return open_bound_db(cfg, rebind=getattr(args, "rebind", False))


# --- status ------------------------------------------------------------------------------


def home_row(h: Any, quarantine_for: dt.timedelta) -> dict[str, Any]:
    """A home as ``status`` shows it: what is on the volume *now* (nothing for an
    archived home: its last size is the quarantine's while that lasts)."""
    cold = h.state in ("archived", "restoring") or (h.state == "failed" and h.is_cold)
    in_quarantine = bool(cold and h.quarantine_path and os.path.isdir(h.quarantine_path))
    expires = h.archived_at + quarantine_for if in_quarantine and h.archived_at else None
    return {
        "user": h.user,
        "state": h.state,
        "path": h.path,
        "hot_bytes": 0 if cold else h.hot_bytes,
        "hot_files": 0 if cold else h.hot_files,
        "stored_bytes": h.stored_bytes,
        "quarantine_bytes": h.hot_bytes if in_quarantine else 0,
        "quarantine_expires": expires,
        "last_activity": h.last_activity,
        "last_activity_source": h.last_activity_source,
        "exempt": h.exempt,
        "exempt_reason": h.exempt_reason,
        "error": h.error,
        "state_since": h.state_since,
        "archived_at": h.archived_at,
        "restored_at": h.restored_at,
    }


TABLE_LIMIT = 100
"""Homes a table shows unless told otherwise: a hub of 50,000 homes is not one screen."""


def _homes(db: Any, state: str | None, search: str, limit: int | None) -> tuple[list[Any], int]:
    """Homes by user name, paged in the database (``state.listing``); (homes, total)."""
    from hometier.state import listing

    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    homes: list[Any] = []
    cursor = None
    total = 0
    while limit is None or len(homes) < limit:
        step = listing.MAX_LIMIT if limit is None else min(listing.MAX_LIMIT, limit - len(homes))
        page = listing.page_homes(db, state=state, q=search, limit=step, cursor=cursor)
        total = page.total
        homes += [row.home for row in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    return homes, total


def cmd_status(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import queries

    quarantine_for = parse_duration(Archiver(config=cfg.config).quarantine_for)
    db = _db(args, cfg)
    try:
        more = 0
        if args.user:
            homes = [queries.get_home(db, check_username(args.user))]
        else:
            limit = None if args.all else args.limit
            if limit is None and not args.all and not args.json:
                limit = TABLE_LIMIT
            homes, total = _homes(db, args.state, args.search, limit)
            more = total - len(homes)
        rows = [home_row(h, quarantine_for) for h in homes]
        if args.user:
            now = dt.datetime.now(dt.UTC)
            rows[0]["leases"] = [
                {
                    "id": le.id,
                    "holder": le.holder,
                    "purpose": le.purpose,
                    "expires_at": le.expires_at,
                }
                for le in queries.active_leases(db, args.user, now)
            ]
    finally:
        db.dispose()
    if args.json:
        emit_json(rows[0] if args.user else rows)
        return 0
    table = Table("user", "state", "on volume", "in bucket", "last activity", "error")
    for r in rows:
        on_volume = human(r["hot_bytes"])
        if r["state"] in ("archived", "restoring") or r["quarantine_expires"]:
            on_volume = "-"
            if r["quarantine_expires"]:
                on_volume = (
                    f"{human(r['quarantine_bytes'])} in quarantine "
                    f"until {when(r['quarantine_expires'])}"
                )
        seen = r["last_activity"]
        table.add_row(
            r["user"],
            r["state"] + (" (exempt)" if r["exempt"] else ""),
            on_volume,
            human(r["stored_bytes"]),
            f"{when(seen)} ({r['last_activity_source']})" if seen else "-",
            r["error"] or "",
        )
    out.print(table)
    if more:
        err.print(f"… and {more} more homes (--limit N, --all, --state, --search)")
    for r in rows:
        for le in r.get("leases", []):
            out.print(f"lease {le['id']} held by {le['holder']} until {when(le['expires_at'])}")
    return 0


# --- exempt and lease --------------------------------------------------------------------


def _existing_home(db: Any, cfg: Hometier, user: str, now: dt.datetime) -> None:
    """Register ``user``'s home if its folder exists; ``NoSuchHome`` if neither the
    database nor the volume knows it (a mistyped name must not become a phantom home)."""
    from hometier.lifecycle.homes import HomeLayout
    from hometier.state import queries

    try:
        queries.get_home(db, user)
        return
    except queries.HomeNotFound:
        pass
    path = HomeLayout(cfg.homes, cfg.home_template).path(user)
    if not path.is_dir():
        raise NoSuchHome(user, path)
    queries.get_or_create_home(db, user, str(path), now, actor="cli")


def cmd_exempt(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import queries

    user = check_username(args.user)
    db = _db(args, cfg)
    try:
        now = dt.datetime.now(dt.UTC)
        _existing_home(db, cfg, user, now)
        queries.set_exempt(db, user, not args.remove, args.reason, "cli", now)
    finally:
        db.dispose()
    if args.json:
        emit_json({"user": user, "exempt": not args.remove})
    else:
        out.print(f"{user}: {'no longer exempt' if args.remove else 'exempt from archiving'}")
    return 0


def cmd_lease(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import queries

    duration = lease_duration(args.duration) if not args.release else None
    db = _db(args, cfg)
    try:
        now = dt.datetime.now(dt.UTC)
        if args.release:
            released = queries.release_lease(db, args.release, now)
            if args.json:
                emit_json({"lease": args.release, "released": released})
            else:
                state = "released" if released else "was already released"
                out.print(f"lease {args.release} {state}")
            return 0
        assert duration is not None
        if args.renew:
            lease = queries.renew_lease(db, args.renew, duration, now)
        else:
            if not args.user:
                raise UsageError("lease needs a USER (or --release/--renew LEASE_ID)")
            user = check_username(args.user)
            _existing_home(db, cfg, user, now)
            lease = queries.acquire_lease(db, user, args.holder, args.purpose, duration, now)
    finally:
        db.dispose()
    if args.json:
        emit_json(
            {
                "lease": lease.id,
                "holder": lease.holder,
                "expires_at": lease.expires_at,
                "seconds": duration.total_seconds(),
            }
        )
    else:
        out.print(lease.id)
        err.print(f"held by {lease.holder} until {when(lease.expires_at)}")
    return 0
