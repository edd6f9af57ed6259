"""What the admin overview shows: totals, costs, bytes on each tier over time.

Pure functions over what ``state.listing`` reads (aggregates and the daily rollup), so
they can be tested without a server.

Terms, as the cards say them: *hot* is the size of the homes whose files are on the
POSIX volume; *archived* is the size of the homes whose files live only in the bucket
(their logical size, before dedup and compression); *stored in the bucket* is what every
recorded snapshot added to the bucket after dedup and compression, for every home,
archived or not (a home that is hot again keeps its snapshots). So the bucket can hold
more than "archived" (old snapshots of hot homes) or less (dedup, compression).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, Integer, default
from traitlets.config import Configurable

from hometier.lifecycle.prices import DEFAULT_TIERS

GB = 1024**3
"""A "GB-month" as AWS and Google bill it is a binary gigabyte (GiB)."""

RANGES = (7, 30, 90, 365)
"""The chart's time ranges, in days."""


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
    history_days = Integer(
        90, help="Days of history the chart of bytes per tier shows first (7, 30, 90 or 365)."
    ).tag(config=True)

    @default("price_posix")
    def _price_posix_default(self) -> float:
        return _env_float("HOMETIER_PRICE_POSIX", DEFAULT_TIERS["efs-standard"].price_per_gb)

    @default("price_object")
    def _price_object_default(self) -> float:
        return _env_float("HOMETIER_PRICE_OBJECT", DEFAULT_TIERS["s3-standard"].price_per_gb)


# --- totals ------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    homes: int
    by_state: dict[str, int]
    hot_bytes: int
    """Homes whose files are on the POSIX volume (their size)."""
    archived_bytes: int
    """Homes whose files live only in the bucket (their logical size)."""
    stored_bytes: int
    """What every recorded snapshot added to the bucket (after dedup and compression)."""
    price_posix: float
    price_object: float
    hot_homes: int = 0
    cold_homes: int = 0

    @property
    def hot_cost(self) -> float:
        return self.hot_bytes / GB * self.price_posix

    @property
    def stored_cost(self) -> float:
        return self.stored_bytes / GB * self.price_object

    @property
    def cost_without(self) -> float:
        """Monthly cost if every home stayed on the POSIX volume."""
        return (self.hot_bytes + self.archived_bytes) / GB * self.price_posix

    @property
    def cost_now(self) -> float:
        return self.hot_cost + self.stored_cost

    @property
    def saving(self) -> float:
        """Estimated monthly saving: archived bytes off POSIX minus the bucket's cost."""
        return self.cost_without - self.cost_now


def make_totals(t: Any, prices: Dashboard) -> Totals:
    """``Totals`` from ``state.listing.TierTotals`` and the configured prices."""
    return Totals(
        t.homes,
        dict(t.by_state),
        t.hot_bytes,
        t.archived_bytes,
        t.stored_bytes,
        prices.price_posix,
        prices.price_object,
        t.hot_homes,
        t.cold_homes,
    )


# --- the chart (inline SVG) --------------------------------------------------------


@dataclass(frozen=True)
class DayPoint:
    day: dt.date
    hot: int
    archived: int
    stored: int


def day_points(rows: Sequence[Any]) -> list[DayPoint]:
    """``DayPoint``s from ``tier_days`` rows."""
    return [DayPoint(r.day, r.hot_bytes, r.archived_bytes, r.stored_bytes) for r in rows]


@dataclass
class Series:
    key: str
    name: str
    css: str
    path: str
    kind: str
    """``area`` (stacked), ``line`` (a step line) or ``cost`` (on the right axis)."""


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
    cost_ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str, str]]
    """(x, shown date, ISO date)."""
    days: int
    columns: list[tuple[float, float, str]] = field(default_factory=list)
    """(x, width, what the day's values were): one hover target per day."""


SERIES = (
    ("hot", "On the POSIX volume (hot)", "tier-posix", "area"),
    ("stored", "Stored in the bucket", "tier-object", "area"),
    ("archived", "Archived homes (their size before dedup)", "tier-archived", "line"),
    ("cost", "Cost per month (right axis)", "tier-cost", "cost"),
)

BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def nice_step(top: float, count: int = 4) -> float:
    """A round step (1, 2, 2.5 or 5 × 10^k) giving about ``count`` intervals up to ``top``."""
    if top <= 0:
        return 1.0
    raw = top / count
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw:
            return m * mag
    return 10.0 * mag


def byte_ticks(top: int, count: int = 4) -> tuple[list[int], int]:
    """Round ticks for bytes, in one binary unit: ``0, 5 GiB, 10 GiB, ...``; returns
    (tick values, the axis's top)."""
    unit = 1
    for k in range(len(BINARY)):
        if top < 1024 ** (k + 1) or k == len(BINARY) - 1:
            unit = 1024**k
            break
    step = nice_step(max(top, 1) / unit, count) * unit
    if unit == 1:
        step = max(1, math.ceil(step))  # whole bytes
    n = max(1, math.ceil(top / step)) if top > 0 else count
    return [round(step * i) for i in range(n + 1)], round(step * n)


def tick_label(value: int, step: int) -> str:
    """``5 GiB``, ``2.5 GiB``: in the largest unit the axis's ``step`` fills at least
    once, trailing zeros dropped."""
    if value == 0:
        return "0"
    k = 0
    while k < len(BINARY) - 1 and step >= 1024 ** (k + 1):
        k += 1
    shown = f"{value / 1024**k:.2f}".rstrip("0").rstrip(".")
    return f"{shown} {BINARY[k]}"


def short_date(day: dt.date, with_year: bool = False) -> str:
    """``3 Mar`` (``3 Mar 2025`` when asked): a date people read at a glance."""
    return f"{day.day} {day.strftime('%b')}" + (f" {day.year}" if with_year else "")


def _step_path(coords: list[tuple[float, float]], x_end: float) -> str:
    """A step line: each day's value holds until the next day."""
    if not coords:
        return ""
    parts = [f"M{coords[0][0]},{coords[0][1]}"]
    for (_x0, y0), (x1, y1) in zip(coords, coords[1:], strict=False):
        parts.append(f"H{x1}")
        if y1 != y0:
            parts.append(f"V{y1}")
    parts.append(f"H{x_end}")
    return " ".join(parts)


def _step_area(
    upper: list[tuple[float, float]], lower: list[tuple[float, float]], x_end: float
) -> str:
    """The area between two step lines: along ``upper``, back along ``lower``."""
    if not upper:
        return ""
    back = list(reversed(lower))
    parts = [_step_path(upper, x_end), f"V{back[0][1]}", f"H{back[0][0]}"]
    for x, y in back[1:]:
        parts += [f"V{y}", f"H{x}"]
    return " ".join(parts) + " Z"


def make_chart(
    points: list[DayPoint],
    prices: Dashboard | None = None,
    days: int = 90,
    width: int = 760,
    height: int = 280,
) -> Chart:
    """Coordinates of the chart: stacked step areas (hot, then stored in the bucket), the
    archived homes' logical size as a step line, the monthly cost on a right axis."""
    prices = prices or Dashboard()
    left, right, top, bottom = 72, width - 64, 14, height - 30
    n = len(points)
    stacked = [p.hot + p.stored for p in points]
    top_value = max([*stacked, *(p.archived for p in points), 1])
    ticks, axis_top = byte_ticks(top_value)
    costs = [p.hot / GB * prices.price_posix + p.stored / GB * prices.price_object for p in points]
    cost_step = nice_step(max(costs + [0.01]), 4)
    cost_top = cost_step * max(1, math.ceil(max(costs + [0.01]) / cost_step))
    x_end = right

    def x(i: int) -> float:
        return round(left + (right - left) * i / max(n, 1), 1)

    def y(v: float) -> float:
        return round(bottom - (bottom - top) * v / axis_top, 1)

    def yc(v: float) -> float:
        return round(bottom - (bottom - top) * v / cost_top, 1)

    base = [(x(i), float(bottom)) for i in range(n)]
    hot = [(x(i), y(p.hot)) for i, p in enumerate(points)]
    both = [(x(i), y(p.hot + p.stored)) for i, p in enumerate(points)]
    archived = [(x(i), y(p.archived)) for i, p in enumerate(points)]
    cost = [(x(i), yc(c)) for i, c in enumerate(costs)]

    series = [
        Series("hot", SERIES[0][1], SERIES[0][2], _step_area(hot, base, x_end), "area"),
        Series("stored", SERIES[1][1], SERIES[1][2], _step_area(both, hot, x_end), "area"),
        Series("archived", SERIES[2][1], SERIES[2][2], _step_path(archived, x_end), "line"),
        Series("cost", SERIES[3][1], SERIES[3][2], _step_path(cost, x_end), "cost"),
    ]
    columns = []
    for i, p in enumerate(points):
        x0, x1 = x(i), (x(i + 1) if i + 1 < n else x_end)
        tip = (
            f"{short_date(p.day, True)}: {human_bytes(p.hot)} hot, {human_bytes(p.stored)} "
            f"stored in the bucket, {human_bytes(p.archived)} archived; "
            f"{money(costs[i])} per month"
        )
        columns.append((x0, round(x1 - x0, 1), tip))
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    y_ticks = [(y(v), tick_label(v, step)) for v in ticks]
    k = 0
    cost_ticks = []
    while cost_step * k <= cost_top + 1e-9:
        cost_ticks.append((yc(cost_step * k), money_tick(cost_step * k, cost_step)))
        k += 1
    picks = sorted({0, n // 2, n - 1}) if n else []
    with_year = bool(points) and points[0].day.year != points[-1].day.year
    x_labels = [
        (x(i), short_date(points[i].day, with_year), points[i].day.isoformat()) for i in picks
    ]
    return Chart(
        width,
        height,
        left,
        top,
        right,
        bottom,
        series,
        y_ticks,
        cost_ticks,
        x_labels,
        days,
        columns,
    )


def money_tick(usd: float, step: float = 1.0) -> str:
    """``$0``, ``$25``, ``$2.5``, ``$0.005``: an axis label with as many decimals as the
    axis's ``step`` needs."""
    if usd == 0:
        return "$0"
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"${usd:,.{decimals}f}"


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
    """``31 Jan 2025, 14:02 UTC``: a human date, never an ISO string with microseconds."""
    if when is None:
        return "—"
    t = when.astimezone(dt.UTC)
    return f"{t.day} {t.strftime('%b %Y, %H:%M')} UTC"


def iso(when: dt.datetime | None) -> str:
    """``2025-01-31T14:02:03Z``: for a ``title`` or ``datetime`` attribute, to the second."""
    if when is None:
        return ""
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
ISO_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


def short_id(value: str, keep: int = 12) -> str:
    """A 64-hex id cut to its first ``keep`` digits (what people compare and quote)."""
    return (
        value[:keep] if len(value) > keep and all(c in "0123456789abcdef" for c in value) else value
    )


def tidy(text: str) -> str:
    """Text for a person: 64-hex ids shortened, ISO times made human."""

    def _time(m: re.Match[str]) -> str:
        try:
            when = dt.datetime.fromisoformat(m.group(0).replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            return m.group(0)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return stamp(when)

    return ISO_TIME.sub(_time, HEX64.sub(lambda m: m.group(0)[:12] + "…", text))
