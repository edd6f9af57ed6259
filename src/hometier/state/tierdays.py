"""The daily rollup of bytes per tier (``tier_days``), the admin chart's source.

One row per UTC day: the homes' bytes on the POSIX volume, archived (their logical size,
in the bucket only) and stored in the bucket (after dedup and compression) as last seen
that day. Rows are written by whoever computes the totals (the dashboard, a metrics
scrape) and, for days nobody looked, rebuilt once from the event log
(``listing.tier_days``). Imported by ``models`` so that the metadata holds the table.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, Date, String, func, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from hometier.state.models import Base, Event, Home, Snapshot


class TierDay(Base):
    """Bytes on each tier at the end of one day (or when last seen, for today)."""

    __tablename__ = "tier_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    hot_bytes: Mapped[int] = mapped_column(BigInteger)
    archived_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    hot_homes: Mapped[int] = mapped_column(BigInteger)
    cold_homes: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    """``seen`` (totals computed that day) or ``rebuilt`` (from the event log)."""
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<TierDay {self.day} hot={self.hot_bytes} archived={self.archived_bytes}>"


# --- rebuilding days nobody looked at, from the event log ----------------------------

_HOT = frozenset({"active", "archiving"})
_COLD = frozenset({"archived", "restoring"})


def _tier_after(to_state: str, from_state: str | None, before: str) -> str:
    """``hot`` or ``cold`` after a transition; ``failed`` keeps the tier it left."""
    for state in (to_state, from_state):
        if state in _HOT:
            return "hot"
        if state in _COLD:
            return "cold"
    return before


def rebuild_tier_days(session: Any, first: date, last: date, now: datetime) -> list[TierDay]:
    """Rows for ``first``..``last`` (inclusive) rebuilt from the event log in one sweep.

    A state event does not record the home's size, so a home counts with the size of
    its newest snapshot taken by then (its current size before its first snapshot); its
    tier follows its state. Reads the transitions since ``first``, the last one of each
    home before it, and the snapshots: O(events + snapshots + days), never per day × home.
    """
    start = datetime.combine(first, time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)
    moved = (Event.to_state.is_not(None), Event.user.is_not(None))
    last_before = select(func.max(Event.id)).where(*moved, Event.at < start).group_by(Event.user)
    moves = session.execute(
        select(Event.at, Event.user, Event.to_state, Event.from_state)
        .where(*moved, Event.at < end, or_(Event.at >= start, Event.id.in_(last_before)))
        .order_by(Event.id)
    ).all()
    snaps = session.execute(
        select(Snapshot.time, Home.user, Snapshot.bytes, Snapshot.stored_bytes)
        .join(Home, Home.id == Snapshot.home_id)
        .where(Snapshot.time < end)
        .order_by(Snapshot.time)
    ).all()
    current = dict(session.execute(select(Home.user, Home.hot_bytes)).all())
    first_snap: dict[str, int] = {}
    for _t, user, nbytes, _s in snaps:
        first_snap.setdefault(user, nbytes)
    # A merged stream: (time, 0 = snapshot first on ties, row).
    stream = sorted(
        [(t, 0, ("snap", u, b, sb)) for t, u, b, sb in snaps]
        + [(at, 1, ("move", u, to, fr)) for at, u, to, fr in moves],
        key=lambda e: (e[0], e[1]),
    )
    tier: dict[str, str] = {}
    size: dict[str, int] = {}
    sums = {"hot": 0, "cold": 0}
    counts = {"hot": 0, "cold": 0}
    stored = 0
    out: list[TierDay] = []
    day, i = first, 0
    while day <= last:
        day_end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        while i < len(stream) and stream[i][0] < day_end:
            kind, user, a, b = stream[i][2]
            i += 1
            if kind == "snap":
                stored += b
                old = size.get(user)
                size[user] = a
                if user in tier and old is not None:
                    sums[tier[user]] += a - old
                continue
            if user not in size:
                size[user] = int(current.get(user) or 0) or first_snap.get(user, 0)
            before = tier.get(user)
            after = _tier_after(a, b, before or "hot")
            if before != after:
                if before is not None:
                    sums[before] -= size[user]
                    counts[before] -= 1
                sums[after] += size[user]
                counts[after] += 1
                tier[user] = after
        if day >= first:
            out.append(
                TierDay(
                    day=day,
                    hot_bytes=sums["hot"],
                    archived_bytes=sums["cold"],
                    stored_bytes=stored,
                    hot_homes=counts["hot"],
                    cold_homes=counts["cold"],
                    source="rebuilt",
                    updated_at=now,
                )
            )
        day += timedelta(days=1)
    return out
