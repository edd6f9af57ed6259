"""What an archiver cycle reads and writes per cycle, in as few round trips as it can.

A cycle over tens of thousands of homes first decides from the database alone
(``cycle_homes``: one statement, lease counts included), then walks only the homes that
could be chosen; each walk is written back in one statement (``record_walk``), and the
Hub's activity for every user in one transaction (``record_activities``).

``last_activity`` only ever moves forward here, as in ``queries.record_activity``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal, or_, select, update

from hometier.state.models import Home, Lease
from hometier.state.queries import Target, _aware, _tx


@dataclass(frozen=True)
class CycleHome:
    """One home as the database knows it at the start of a cycle."""

    user: str
    path: str
    state: str
    exempt: bool
    last_activity: datetime | None
    activity_source: str | None
    hot_bytes: int
    leases: int
    """Leases neither released nor expired at ``now``."""


def cycle_homes(target: Target, now: datetime) -> list[CycleHome]:
    """Every home, ordered by user, with its active lease count: one statement."""
    _aware(now)
    leases = (
        select(Lease.home_id, func.count(Lease.id).label("n"))
        .where(Lease.released_at.is_(None), Lease.expires_at > now)
        .group_by(Lease.home_id)
        .subquery()
    )
    q = (
        select(
            Home.user,
            Home.path,
            Home.state,
            Home.exempt,
            Home.last_activity,
            Home.last_activity_source,
            Home.hot_bytes,
            func.coalesce(leases.c.n, 0),
        )
        .outerjoin(leases, leases.c.home_id == Home.id)
        .order_by(Home.user)
    )
    with _tx(target, write=False) as s:
        return [
            CycleHome(u, p, st, bool(ex), la, src, int(hb or 0), int(n))
            for u, p, st, ex, la, src, hb, n in s.execute(q)
        ]


def _forward(at: datetime, source: str) -> dict[str, Any]:
    """Values that move ``last_activity`` to ``at`` only if it is newer (never back)."""
    newer = or_(Home.last_activity.is_(None), Home.last_activity < at)
    # Bound with the column's own type, so that it is stored as UTC on every backend.
    value = literal(at, Home.last_activity.type)
    return {
        "last_activity": case((newer, value), else_=Home.last_activity),
        "last_activity_source": case((newer, source), else_=Home.last_activity_source),
    }


def record_activities(target: Target, seen: Iterable[tuple[str, datetime]], source: str) -> int:
    """Move ``last_activity`` forward for many users in one transaction; how many moved.

    Unknown users are ignored (the Hub knows users who never had a home here)."""
    moved = 0
    with _tx(target) as s:
        for user, at in seen:
            _aware(at)
            stmt = (
                update(Home)
                .where(Home.user == user)
                .where(or_(Home.last_activity.is_(None), Home.last_activity < at))
                .values(last_activity=at, last_activity_source=source)
                .execution_options(synchronize_session=False)
            )
            moved += s.execute(stmt).rowcount or 0  # type: ignore[attr-defined]
    return moved


@dataclass(frozen=True)
class Walked:
    """A home's row after ``record_walk``."""

    last_activity: datetime | None
    activity_source: str | None
    hot_bytes: int


def record_walk(
    target: Target,
    user: str,
    newest: datetime | None,
    sizes: tuple[int, int] | None,
    source: str = "files",
) -> Walked | None:
    """What a walk of a home found, in one statement: the newest file time moves
    ``last_activity`` forward (never back); ``sizes`` (bytes, files), when the walk was
    complete, replace the recorded ones. Returns the row's new values, or None if the home
    is no longer known."""
    values: dict[str, Any] = {}
    if newest is not None:
        values.update(_forward(_aware(newest), source))
    if sizes is not None:
        values.update(hot_bytes=sizes[0], hot_files=sizes[1])
    with _tx(target, write=bool(values)) as s:
        if not values:
            row = s.execute(
                select(Home.last_activity, Home.last_activity_source, Home.hot_bytes).where(
                    Home.user == user
                )
            ).one_or_none()
        else:
            row = s.execute(
                update(Home)
                .where(Home.user == user)
                .values(values)
                .returning(Home.last_activity, Home.last_activity_source, Home.hot_bytes)
                .execution_options(synchronize_session=False)
            ).one_or_none()
    if row is None:
        return None
    la, src, hb = row
    return Walked(la, src, int(hb or 0))


__all__ = ["CycleHome", "Walked", "cycle_homes", "record_activities", "record_walk"]
