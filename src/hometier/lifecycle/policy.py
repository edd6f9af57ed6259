"""Who to archive now: a pure function of the homes, their activity, the clock and policy.

``select_idle(homes, now, policy)`` returns one ``Decision`` per home, saying whether it
is chosen and why (or why not), chosen homes first, least recently active first. It reads
no clock, no database and no filesystem: callers gather the facts (``HomeFacts``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from hometier.errors import UsageError


@dataclass(frozen=True)
class Policy:
    """The archiving policy; ``Archiver`` traits build it from configuration."""

    inactive_after: dt.timedelta = dt.timedelta(days=30)
    min_size: int = 0
    """Homes smaller than this (bytes) are not worth archiving."""
    max_size: int = 0
    """Homes larger than this (bytes) are skipped; 0 means no cap."""
    max_per_cycle: int = 50
    quiet_hours: tuple[dt.time, dt.time] | None = None
    """Local times between which nothing is archived, e.g. (08:00, 20:00)."""
    timezone: dt.tzinfo = dt.UTC


@dataclass(frozen=True)
class Retention:
    """Which snapshots to keep; ``Retention`` traits build it from configuration."""

    keep_last: int = 3
    keep_within: dt.timedelta | None = dt.timedelta(days=30)
    grace: dt.timedelta = dt.timedelta(days=1)
    """Longer than the longest archive: how long marked packs wait before deletion."""
    every: dt.timedelta | None = dt.timedelta(days=1)
    """How often the loop applies retention and prunes; None: never (CLI only)."""
    repack_waste: float | None = 0.5
    """Repack a partly used pack once this fraction of it is unused; None: never."""
    repack_max: int = 4 * 1024**3


@dataclass(frozen=True)
class HomeFacts:
    """What the caller knows about one home at ``now``."""

    user: str
    state: str
    hot_bytes: int = 0
    exempt: bool = False
    last_activity: dt.datetime | None = None
    activity_source: str | None = None
    server_running: bool = False
    """A running or pending server (named ones too) or a spawn in progress."""
    leases: int = 0
    """Active leases."""
    folder_missing: bool = False
    """The home folder is not on the volume (a typo, or removed by an operator)."""


@dataclass(frozen=True)
class Decision:
    user: str
    chosen: bool
    reason: str
    idle_for: dt.timedelta | None = None


def parse_quiet_hours(value: str) -> tuple[dt.time, dt.time] | None:
    """``"08:00-20:00"`` → (08:00, 20:00); empty → None. May wrap midnight."""
    if not value.strip():
        return None
    try:
        start, end = (dt.time.fromisoformat(p.strip()) for p in value.split("-", 1))
    except ValueError as exc:
        raise UsageError(f"quiet hours must look like 08:00-20:00, not {value!r}") from exc
    return start, end


def in_quiet_hours(now: dt.datetime, policy: Policy) -> bool:
    if policy.quiet_hours is None:
        return False
    start, end = policy.quiet_hours
    local = now.astimezone(policy.timezone).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def select_idle(homes: Iterable[HomeFacts], now: dt.datetime, policy: Policy) -> list[Decision]:
    """Decide for every home; chosen ones first (oldest activity first), at most
    ``max_per_cycle`` chosen. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    quiet = in_quiet_hours(now, policy)
    eligible: list[tuple[dt.datetime, HomeFacts]] = []
    out: list[Decision] = []
    for h in homes:
        idle = now - h.last_activity if h.last_activity is not None else None
        reason = _refusal(h, idle, policy)
        if reason is None and quiet:
            reason = "quiet hours"
        if reason is not None:
            out.append(Decision(h.user, False, reason, idle))
            continue
        oldest = h.last_activity or dt.datetime.min.replace(tzinfo=dt.UTC)
        eligible.append((oldest, h))
    eligible.sort(key=lambda x: (x[0], x[1].user))
    chosen: list[Decision] = []
    for i, (_, h) in enumerate(eligible):
        idle = now - h.last_activity if h.last_activity is not None else None
        if i < policy.max_per_cycle:
            why = f"idle for {_fmt(idle)}" if idle is not None else "no activity ever seen"
            chosen.append(Decision(h.user, True, why, idle))
        else:
            out.append(Decision(h.user, False, "over max_per_cycle; next cycle", idle))
    return chosen + out


def _refusal(h: HomeFacts, idle: dt.timedelta | None, policy: Policy) -> str | None:
    if h.state != "active":
        return f"state is {h.state}"
    if h.exempt:
        return "exempt"
    if h.folder_missing:
        return "no home folder on the volume"
    if h.server_running:
        return "a server is running"
    if h.leases:
        return f"{h.leases} active lease(s)"
    if idle is not None and idle < policy.inactive_after:
        src = f" ({h.activity_source})" if h.activity_source else ""
        if idle < dt.timedelta(0):
            return f"last activity is in the future{src}: clock skew? kept"
        return f"active {_fmt(idle)} ago{src}"
    if h.hot_bytes < policy.min_size:
        return "smaller than min_size"
    if policy.max_size and h.hot_bytes > policy.max_size:
        return "larger than max_size"
    return None


def _fmt(d: dt.timedelta | None) -> str:
    if d is None:
        return "never"
    s = int(d.total_seconds())
    if s < 0:
        return "in the future (clock skew)"
    if s >= 86400:
        return f"{s // 86400}d"
    if s >= 3600:
        return f"{s // 3600}h"
    return f"{s // 60}m"
