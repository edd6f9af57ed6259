"""``hometier plan --replay``: a past login history replayed against an archiving policy.

Before turning archiving on, an operator can ask what a policy would have done over
their own history: how small the homes volume would have been, how many logins would
have waited for a restore and of how many bytes, what the month would have cost. It is
an estimate, pure and quick: today's home sizes stand for every day of the history,
nothing is read from the bucket or written anywhere.

1. ``parse_logins`` reads the history: CSV lines ``user,time`` (a header may name the
   columns; times in ISO 8601, with or without an offset, or Unix seconds), or
   JupyterHub's own log (``User logged in: NAME`` and ``User NAME took 2.1 seconds to
   start``). Times without an offset are in ``tz`` (JupyterHub logs its host's local
   time). Lines it cannot read are counted and a few shown, never fatal.
2. ``replay`` (pure) runs the archiver's rules on a virtual clock: a cycle every
   ``interval`` takes at most ``max_per_cycle`` homes idle for ``inactive_after``,
   least recently active first; a login brings the home back (instantly from the
   quarantine within ``quarantine_for``, else from the bucket) and keeps it busy for
   ``session``. Activity before the history starts is its last login, or the home's
   newest file time.

What it cannot know: how homes grew or shrank (today's sizes are used throughout), edits
between archives (a re-archive is counted as metadata only), and logins the history
does not show (JupyterHub logs ``User logged in`` only when a user authenticates, not
for every visit with a valid cookie; spawn lines help).
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import heapq
import math
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from hometier.lifecycle.prices import Prices, monthly_cost, request_cost

MAX_LINE = 4096
"""Longer lines are malformed (no login line is this long): memory stays bounded."""
EXAMPLES = 5
DAY = 86400.0
PACK = 32 * 1024 * 1024
SEGMENT = 8 * 1024 * 1024

_ANSI = re.compile(rb"\x1b\[[0-9;]*m")
_HUB_LINE = re.compile(
    r"\[[A-Z] (?P<when>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)[^\]]*\] "
    r"(?:User logged in: (?P<login>.+?)|User (?P<spawn>.+?) took [0-9.]+ seconds to start)\s*$"
)
_EPOCH = re.compile(r"^\d{9,11}(?:\.\d+)?$")
USER_COLUMNS = ("user", "username", "user_name", "name", "login")
TIME_COLUMNS = ("time", "timestamp", "login_time", "logged_in", "when", "date", "datetime")
"""A header naming one of each (in any case and order) says where the columns are;
the first of each found wins, other columns are ignored."""
EARLIEST, LATEST = 0.0, 7258118400.0
"""Times outside 1970..2200 are not logins of a JupyterHub (a broken export)."""


@dataclass
class LoginHistory:
    """Login times per user (Unix seconds, in reading order) and what could not be read."""

    times: dict[str, array[float]] = field(default_factory=dict)
    lines: int = 0
    logins: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)
    """A few malformed lines, as ``line N: text`` (shortened, control characters shown)."""

    def add(self, user: str, when: float) -> None:
        self.times.setdefault(user, array("d")).append(when)
        self.logins += 1

    def bad(self, number: int, raw: bytes, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < EXAMPLES:
            text = raw[:80].rstrip(b"\r\n").decode("utf-8", "backslashreplace")
            shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
            self.examples.append(f"line {number}: {why}: {shown}")

    @property
    def first(self) -> float | None:
        return min((min(v) for v in self.times.values() if v), default=None)

    @property
    def last(self) -> float | None:
        return max((max(v) for v in self.times.values() if v), default=None)


def bounded_lines(f: BinaryIO, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """The lines of a binary file, never holding more than ``max_line + 1`` bytes of one:
    a longer line comes out as its first ``max_line + 1`` bytes (``parse_logins`` then
    counts it as too long) and the rest of it is skipped."""
    while True:
        line = f.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith(b"\n"):
            while True:
                rest = f.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line


def parse_time(text: str, tz: dt.tzinfo) -> float | None:
    """ISO 8601 (an offset or ``Z``, else in ``tz``) or Unix seconds; None if neither, or
    outside 1970..2200."""
    text = text.strip()
    if _EPOCH.match(text):
        value = float(text)
    else:
        try:
            t = dt.datetime.fromisoformat(text.replace(",", "."))
            if t.tzinfo is None:
                t = t.replace(tzinfo=tz)
            value = t.timestamp()
        except (OverflowError, ValueError):
            return None
    return value if EARLIEST <= value < LATEST else None


def parse_logins(
    lines: Iterable[bytes], tz: dt.tzinfo = dt.UTC, *, max_line: int = MAX_LINE
) -> LoginHistory:
    """Read a login history (CSV or JupyterHub log lines, mixed); see the module doc.

    User names are decoded as UTF-8 with ``surrogateescape``, as folder names are, so a
    name that is not UTF-8 still matches its home. Never raises for a bad line.
    """
    h = LoginHistory()
    columns = (0, 1)
    first_row = True  # only the first CSV row may be a header: a user named "time" is a user
    for number, raw in enumerate(lines, 1):
        h.lines += 1
        if len(raw) > max_line:
            h.bad(number, raw, "line too long")
            continue
        data = _ANSI.sub(b"", raw).rstrip(b"\r\n")
        if number == 1:
            data = data.removeprefix(b"\xef\xbb\xbf")
        if not data.strip() or data.lstrip().startswith(b"#"):
            continue
        if b"\x00" in data:
            h.bad(number, raw, "NUL byte")
            continue
        text = data.decode("utf-8", "surrogateescape")
        m = _HUB_LINE.search(text)
        if m is not None:
            when = parse_time(m["when"], tz)
            name = m["login"] or (m["spawn"] or "").split(":", 1)[0]
            if when is None or not name:
                h.bad(number, raw, "unreadable time")
            else:
                h.add(name, when)
            continue
        if "User logged in" in text or "seconds to start" in text:
            h.bad(number, raw, "not a JupyterHub log line")
            continue
        try:
            fields = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            h.bad(number, raw, "not CSV")
            continue
        if first_row:
            first_row = False
            if (found := _header(fields)) is not None:
                columns = found
                continue
            if all(parse_time(f, tz) is None for f in fields):
                h.bad(number, raw, "no time (a header needs a user and a time column)")
                continue
        if len(fields) <= max(columns):
            h.bad(number, raw, "expected user,time")
            continue
        name, when = fields[columns[0]].strip(), parse_time(fields[columns[1]], tz)
        if not name or when is None:
            h.bad(number, raw, "no user" if not name else "unreadable time")
            continue
        h.add(name, when)
    return h


def _header(fields: list[str]) -> tuple[int, int] | None:
    """The (user, time) columns a header row names, or None if it is not one."""
    lowered = [f.strip().lower() for f in fields]
    user = next((lowered.index(n) for n in USER_COLUMNS if n in lowered), None)
    when = next((lowered.index(n) for n in TIME_COLUMNS if n in lowered), None)
    if user is None or when is None or user == when:
        return None
    return user, when


# --- the replay (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class ReplayPolicy:
    inactive_after: dt.timedelta
    quarantine_for: dt.timedelta = dt.timedelta(days=3)
    interval: dt.timedelta = dt.timedelta(hours=1)
    max_per_cycle: int = 50
    session: dt.timedelta = dt.timedelta(hours=1)
    """How long a server runs after a login (the history has login times only)."""

    @property
    def label(self) -> str:
        def d(x: dt.timedelta) -> str:
            s = x.total_seconds()
            return f"{s / DAY:g}d" if s % DAY == 0 else f"{s / 3600:g}h"

        return f"idle {d(self.inactive_after)}, quarantine {d(self.quarantine_for)}"


@dataclass(frozen=True)
class ReplayHome:
    bytes: int
    newest: float | None = None
    """Newest file time (Unix seconds), activity the history may not show."""


@dataclass(frozen=True)
class Wait:
    """A login that found its home archived."""

    user: str
    at: float
    bytes: int
    source: str
    """``quarantine`` (moved back, instant) or ``bucket`` (downloaded)."""


@dataclass
class Day:
    at: float
    posix: int
    """Bytes on the homes volume: homes on it and homes still in the quarantine."""
    quarantine: int
    archived: int
    """Homes archived (not on the volume)."""
    stored: float
    """Bytes in the bucket (estimated)."""


@dataclass
class DayCount:
    archives: int = 0
    restores: int = 0
    writes: float = 0.0
    """Estimated write requests (packs, index objects, snapshots)."""
    reads: float = 0.0
    read_bytes: float = 0.0


@dataclass
class ReplayResult:
    policy: ReplayPolicy
    start: float
    end: float
    total_bytes: int
    """What the volume holds without archiving."""
    days: list[Day] = field(default_factory=list)
    archives: int = 0
    restores: int = 0
    logins: int = 0
    waits: list[Wait] = field(default_factory=list)
    per_day: dict[int, DayCount] = field(default_factory=dict)
    """Day index (from ``start``) → what happened that day."""

    def day(self, t: float) -> DayCount:
        return self.per_day.setdefault(int((t - self.start) // DAY), DayCount())

    @property
    def posix_end(self) -> int:
        return self.days[-1].posix if self.days else self.total_bytes

    def month(self, prices: Prices) -> dict[str, float]:
        """USD for the last 30 days (or the whole replay if shorter): storage at the
        average of the daily samples, requests and retrievals counted in that window."""
        since = self.end - 30 * DAY
        days = [d for d in self.days if d.at >= since] or self.days[-1:]
        posix = sum(d.posix for d in days) / max(1, len(days))
        stored = sum(d.stored for d in days) / max(1, len(days))
        window = [c for i, c in self.per_day.items() if self.start + (i + 1) * DAY > since]
        req = request_cost(
            prices.object,
            sum(c.writes for c in window),
            sum(c.reads for c in window),
            sum(c.read_bytes for c in window),
        )
        out = {
            "posix": monthly_cost(posix, prices.posix),
            "object": monthly_cost(stored, prices.object),
            "requests": req,
            "without": monthly_cost(self.total_bytes, prices.posix),
        }
        out["total"] = out["posix"] + out["object"] + out["requests"]
        return out


def _grid(t: float, start: float, step: float) -> float:
    """The first cycle at or after ``t`` (cycles at start, start + step, ...)."""
    if t <= start:
        return start
    return start + math.ceil((t - start) / step - 1e-9) * step


def replay(
    homes: Mapping[str, ReplayHome],
    history: LoginHistory,
    policy: ReplayPolicy,
    start: float,
    end: float,
    *,
    ratio: float = 1.0,
) -> ReplayResult:
    """What ``policy`` does to ``homes`` from ``start`` to ``end`` (Unix seconds), turned
    on at ``start``. ``ratio`` is stored / raw bytes (from ``plan``'s sample). Logins of
    users without a home are ignored (the caller counts them)."""
    if end <= start:
        raise ValueError("the replay must end after it starts")
    step = max(60.0, policy.interval.total_seconds())
    idle = policy.inactive_after.total_seconds()
    keep = policy.quarantine_for.total_seconds()
    session = policy.session.total_seconds()
    res = ReplayResult(policy, start, end, sum(h.bytes for h in homes.values()))
    last: dict[str, float] = {}
    logins: list[tuple[float, str]] = []
    for user, home in homes.items():
        times = sorted(history.times.get(user, ()))
        i = bisect.bisect_left(times, start)
        before = [times[i - 1] + session] if i else []
        if home.newest is not None and home.newest <= start:
            before.append(home.newest)
        if before:
            last[user] = max(before)
        logins.extend((t, user) for t in times[i:] if t < end)
    logins.sort()
    on_disk = set(homes)
    archived_once: set[str] = set()
    version = dict.fromkeys(homes, 0)
    due: list[tuple[float, str, int]] = [
        (last.get(u, -math.inf) + idle, u, 0) for u in sorted(homes)
    ]
    heapq.heapify(due)
    purges: list[tuple[float, str, int]] = []
    quarantined: dict[str, float] = {}
    posix, quarantine, stored = res.total_bytes, 0, 0.0
    next_cycle, next_day, i = start, start, 0

    while True:
        while due and due[0][2] != version[due[0][1]]:
            heapq.heappop(due)  # stale: the home was used or archived since
        t_cycle = _grid(max(next_cycle, due[0][0]), start, step) if due else math.inf
        t_purge = purges[0][0] if purges else math.inf
        t_login = logins[i][0] if i < len(logins) else math.inf
        t = min(t_cycle, t_purge, t_login, next_day)
        if t > end:
            break
        if t == next_day:
            archived = len(homes) - len(on_disk)
            res.days.append(Day(t, posix, quarantine, archived, stored))
            next_day += DAY
        elif t == t_purge:
            _, user, v = heapq.heappop(purges)
            if user in quarantined and v == version[user]:
                del quarantined[user]
                quarantine -= homes[user].bytes
                posix -= homes[user].bytes
        elif t == t_login:
            # A login at a cycle's time goes first: the archive would be cancelled.
            at, user = logins[i]
            i += 1
            res.logins += 1
            if user not in on_disk:
                source = "quarantine" if user in quarantined else "bucket"
                res.waits.append(Wait(user, at, homes[user].bytes, source))
                res.restores += 1
                c = res.day(at)
                c.restores += 1
                if source == "quarantine":
                    del quarantined[user]
                    quarantine -= homes[user].bytes
                else:
                    posix += homes[user].bytes
                    blobs = homes[user].bytes * ratio
                    c.reads += math.ceil(blobs / SEGMENT) + 2
                    c.read_bytes += blobs
                on_disk.add(user)
            version[user] += 1
            last[user] = max(last.get(user, -math.inf), at + session)
            heapq.heappush(due, (last[user] + idle, user, version[user]))
        else:
            taken = 0
            while due and taken < policy.max_per_cycle:
                at, user, v = due[0]
                if at > t:
                    break
                heapq.heappop(due)
                if v != version[user] or user not in on_disk:
                    continue
                taken += 1
                on_disk.discard(user)
                version[user] += 1
                res.archives += 1
                size = homes[user].bytes
                new = size * ratio if user not in archived_once else 0.0
                archived_once.add(user)
                stored += new
                c = res.day(t)
                c.archives += 1
                c.writes += math.ceil(new / PACK) + 3
                c.reads += 2  # the new trees read back (verify)
                quarantined[user] = t
                quarantine += size
                heapq.heappush(purges, (_grid(t + keep, start, step), user, version[user]))
            next_cycle = t + step
    return res


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[k])
