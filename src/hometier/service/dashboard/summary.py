"""What the admin overview shows: totals, the estimated saving, bytes on each tier over time.

Pure functions over rows read by the handlers, so they can be tested without a server.

The history is rebuilt from the event log. A state event does not record the home's
size, so a home's size on a given day is the size (``bytes``) of its newest snapshot
taken by then, or its current size before its first snapshot. Its tier follows its
state: ``active``/``archiving`` are hot (on the POSIX volume), ``archived``/``restoring``
are archived (in the bucket only), ``failed`` keeps the tier of the state it failed in
(a failed restore leaves the files in the bucket). The bucket's
stored bytes grow by what each recorded snapshot added. The last point (today) is the
current totals, as the cards above the chart show them.
"""

from __future__ import annotations

import datetime as dt
import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, Integer, default
from traitlets.config import Configurable

GB = 1024**3
"""A "GB-month" as AWS and Google bill it is a binary gigabyte (GiB)."""

HOT_STATES = frozenset({"active", "archiving"})
COLD_STATES = frozenset({"archived", "restoring"})


def _env_float(name: str, fallback: float) -> float:
    try:
        return float(os.environ.get(name, "") or fallback)
    except ValueError:
        return fallback


class Dashboard(Configurable):
    """The dashboard (``c.Dashboard.*``): prices for the estimated saving, chart length."""

    price_posix = Float(
        help="USD per GB-month of the POSIX volume, for the estimated saving. "
        "Env: HOMETIER_PRICE_POSIX (default 0.30)."
    ).tag(config=True)
    price_object = Float(
        help="USD per GB-month of object storage, for the estimated saving. "
        "Env: HOMETIER_PRICE_OBJECT (default 0.023)."
    ).tag(config=True)
    history_days = Integer(90, help="Days of history in the chart of bytes per tier.").tag(
        config=True
    )

    @default("price_posix")
    def _price_posix_default(self) -> float:
        return _env_float("HOMETIER_PRICE_POSIX", 0.30)

    @default("price_object")
    def _price_object_default(self) -> float:
        return _env_float("HOMETIER_PRICE_OBJECT", 0.023)


# --- totals ------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    homes: int
    by_state: dict[str, int]
    hot_bytes: int
    """On the POSIX volume."""
    archived_bytes: int
    """Logical size of the homes that live only in the bucket."""
    stored_bytes: int
    """What the bucket holds after dedup and compression (the sum of what every recorded
    snapshot added)."""
    price_posix: float
    price_object: float

    @property
    def cost_without(self) -> float:
        """Monthly cost if every home stayed on the POSIX volume."""
        return (self.hot_bytes + self.archived_bytes) / GB * self.price_posix

    @property
    def cost_now(self) -> float:
        return self.hot_bytes / GB * self.price_posix + self.stored_bytes / GB * self.price_object

    @property
    def saving(self) -> float:
        """Estimated monthly saving: archived bytes off POSIX minus the bucket's cost."""
        return self.cost_without - self.cost_now


def home_size(home: Any, last_snapshot: dict[str, int]) -> int:
    """The home's size: as last measured, else as its newest snapshot found it.

    The archiver measures a home when it considers archiving it; a home that has been
    active all along may only have been measured by its snapshots (backups).
    """
    return int(home.hot_bytes or last_snapshot.get(home.user, 0))


def make_totals(
    homes: Iterable[Any], stored_bytes: int, prices: Dashboard, last_snapshot: dict[str, int]
) -> Totals:
    """Totals over ``homes`` (``Home`` rows); ``stored_bytes`` from the snapshots table,
    ``last_snapshot`` maps users to the size of their newest snapshot."""
    by_state = dict.fromkeys(("active", "archiving", "archived", "restoring", "failed"), 0)
    hot = cold = n = 0
    for h in homes:
        n += 1
        by_state[h.state] = by_state.get(h.state, 0) + 1
        if h.is_cold:
            cold += home_size(h, last_snapshot)
        else:
            hot += home_size(h, last_snapshot)
    return Totals(n, by_state, hot, cold, stored_bytes, prices.price_posix, prices.price_object)


# --- history -----------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    user: str
    at: dt.datetime
    to_state: str
    from_state: str | None = None


def _tier(t: Transition, before: str) -> str:
    """``hot`` or ``cold`` after ``t``; ``failed`` keeps the tier of the state it left."""
    for state in (t.to_state, t.from_state):
        if state in HOT_STATES:
            return "hot"
        if state in COLD_STATES:
            return "cold"
    return before


@dataclass(frozen=True)
class SnapSize:
    user: str
    time: dt.datetime
    bytes: int
    stored_bytes: int


@dataclass(frozen=True)
class DayPoint:
    day: dt.date
    hot: int
    archived: int
    stored: int


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def tier_history(
    transitions: Iterable[Transition],
    snaps: Iterable[SnapSize],
    current_sizes: dict[str, int],
    totals: Totals,
    today: dt.date,
    days: int = 90,
) -> list[DayPoint]:
    """One point per day, from the first transition (at most ``days`` back) to today.

    ``transitions`` in log order; ``current_sizes`` maps each home to its size now (used
    before its first snapshot). See the module docstring for what is estimated.
    """
    times: dict[str, list[dt.datetime]] = {}
    tiers: dict[str, list[str]] = {}
    first: dt.date | None = None
    for t in transitions:
        ts, ti = times.setdefault(t.user, []), tiers.setdefault(t.user, [])
        ts.append(t.at)
        ti.append(_tier(t, ti[-1] if ti else "hot"))
        day = t.at.astimezone(dt.UTC).date()
        first = day if first is None or day < first else first
    snap_times: dict[str, list[dt.datetime]] = {}
    snap_bytes: dict[str, list[int]] = {}
    stored_steps: list[tuple[dt.datetime, int]] = []
    for s in sorted(snaps, key=lambda s: s.time):
        snap_times.setdefault(s.user, []).append(s.time)
        snap_bytes.setdefault(s.user, []).append(s.bytes)
        stored_steps.append((s.time, s.stored_bytes))
    stored_times = [t for t, _ in stored_steps]
    stored_cum: list[int] = []
    acc = 0
    for _, b in stored_steps:
        acc += b
        stored_cum.append(acc)

    start = max(first or today, today - dt.timedelta(days=max(days, 1) - 1))
    points = []
    for i in range((today - start).days):
        day = start + dt.timedelta(days=i)
        end = _end_of(day)
        hot = cold = 0
        for user, ts in times.items():
            k = bisect_right(ts, end) - 1
            if k < 0:
                continue
            j = bisect_right(snap_times.get(user, []), end) - 1
            size = snap_bytes[user][j] if j >= 0 else current_sizes.get(user, 0)
            if tiers[user][k] == "hot":
                hot += size
            else:
                cold += size
        j = bisect_right(stored_times, end) - 1
        points.append(DayPoint(day, hot, cold, stored_cum[j] if j >= 0 else 0))
    points.append(DayPoint(today, totals.hot_bytes, totals.archived_bytes, totals.stored_bytes))
    return points


# --- the chart (inline SVG) --------------------------------------------------------


@dataclass
class Series:
    name: str
    css: str
    path: str
    dots: list[tuple[float, float, str]] = field(default_factory=list)
    """(x, y, tooltip) per point."""


@dataclass
class Chart:
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    series: list[Series]
    y_ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]


SERIES = (
    ("hot", "On the POSIX volume", "tier-hot"),
    ("archived", "Archived (logical size)", "tier-archived"),
    ("stored", "Stored in the bucket", "tier-stored"),
)


def make_chart(points: list[DayPoint], width: int = 760, height: int = 260) -> Chart:
    """Coordinates of a line chart of ``points`` (the template draws it)."""
    left, right, top, bottom = 78, width - 16, 14, height - 30
    top_value = max([max(p.hot, p.archived, p.stored) for p in points] + [1])
    n = len(points)

    def x(i: int) -> float:
        return (left + right) / 2 if n == 1 else left + (right - left) * i / (n - 1)

    def y(v: int) -> float:
        return bottom - (bottom - top) * v / top_value

    series = []
    for key, name, css in SERIES:
        coords = [(round(x(i), 1), round(y(getattr(p, key)), 1)) for i, p in enumerate(points)]
        path = "M" + " L".join(f"{cx},{cy}" for cx, cy in coords) if coords else ""
        dots = [
            (cx, cy, f"{p.day.isoformat()}: {human_bytes(getattr(p, key))} {name.lower()}")
            for (cx, cy), p in zip(coords, points, strict=True)
        ]
        series.append(Series(name, css, path, dots))
    y_ticks = [(round(y(top_value * k // 4), 1), human_bytes(top_value * k // 4)) for k in range(5)]
    picks = sorted({0, n // 2, n - 1}) if n else []
    x_labels = [(round(x(i), 1), points[i].day.isoformat()) for i in picks]
    return Chart(width, height, left, top, right, bottom, series, y_ticks, x_labels)


# --- formatting --------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    """``1.2 GiB`` (binary units, as storage is billed)."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def money(usd: float) -> str:
    """``$1,234.56``; small amounts keep four decimals so that they do not read as 0."""
    if abs(usd) >= 1 or usd == 0:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """``3 d ago``, ``5 min ago``; ``never`` for None."""
    if when is None:
        return "never"
    s = (now - when).total_seconds()
    if s < 0:
        return "in the future"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return "just now"


def stamp(when: dt.datetime | None) -> str:
    """``2025-01-31 14:02 UTC``."""
    if when is None:
        return "—"
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
