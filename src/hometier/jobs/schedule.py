"""When a job runs: cron expressions with a time zone (``cronsim``), or once.

A cron expression has the five classic fields (minute, hour, day of month, month, day of
week) or is one of the ``@daily``-style nicknames. It is evaluated in the job's time
zone, so "30 2 * * *" in ``Europe/Paris`` means half past two local time all year; on
the night clocks spring forward that time does not exist and the run happens at the
first minute after the gap, and on the night they fall back it runs once.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from hometier.errors import UsageError

MAX_EXPRESSION = 120
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class BadSchedule(UsageError):
    """Invalid schedule {!r}: {}."""


class BadTimezone(UsageError):
    """Unknown time zone {!r}: use an IANA name such as Europe/Paris or UTC."""


def timezone(name: str) -> zoneinfo.ZoneInfo:
    if not name or len(name) > 64 or ".." in name or name.startswith("/"):
        raise BadTimezone(name[:64])
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadTimezone(name) from None


def normalize(expr: str) -> str:
    """The five-field form of ``expr``; ``BadSchedule`` for anything else."""
    if not isinstance(expr, str):
        raise BadSchedule(str(expr)[:40], "it must be a string")
    text = " ".join(expr.split())
    if len(text) > MAX_EXPRESSION:
        raise BadSchedule(text[:40] + "…", f"longer than {MAX_EXPRESSION} characters")
    if not text.isascii() or not text.isprintable():
        raise BadSchedule(text[:40], "it must be printable ASCII")
    text = NICKNAMES.get(text.lower(), text)
    if len(text.split()) != 5:
        raise BadSchedule(
            text, "cron needs five fields: minute hour day-of-month month day-of-week"
        )
    return text


def next_after(expr: str, tz: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after ``after`` that ``expr`` names in ``tz``, in UTC."""
    from cronsim import CronSim, CronSimError

    text = normalize(expr)
    local = after.astimezone(timezone(tz)).replace(second=0, microsecond=0)
    try:
        it = CronSim(text, local)
        for _ in range(4):
            t = next(it).astimezone(dt.UTC)
            if t > after:
                return t
    except CronSimError as exc:
        raise BadSchedule(text, str(exc).lower() or "not a cron expression") from None
    except StopIteration:
        pass
    raise BadSchedule(text, "it never fires")


def check(expr: str, tz: str, now: dt.datetime, min_interval: dt.timedelta) -> str:
    """Validate a schedule; it must fire, and never twice within ``min_interval``.

    Returns its normalized form. Raises ``BadSchedule`` or ``BadTimezone``.
    """
    text = normalize(expr)
    t = next_after(text, tz, now)
    # A few dozen firings show any burst ("* * * * *", "*/1 3 * * *"): they come in
    # the same minutes of the same hours every day, so one day's worth is enough.
    for _ in range(48):
        nxt = next_after(text, tz, t)
        if nxt - t < min_interval:
            raise BadSchedule(text, f"it fires more often than every {_human(min_interval)}")
        t = nxt
        if t - now > dt.timedelta(days=2):
            break
    return text


def _human(d: dt.timedelta) -> str:
    s = int(d.total_seconds())
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"
