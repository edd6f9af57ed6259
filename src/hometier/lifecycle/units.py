"""Parse the human units of configuration: durations (``30d``) and sizes (``10GB``)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from hometier.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        try:
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(value)
            return timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise UsageError(f"not a duration: {value!r} seconds is out of range") from None
    m = _DURATION.match(value)
    if not m:
        raise UsageError(f"not a duration: {value!r} (use e.g. 30d, 12h, 90m, 2w)")
    try:
        return timedelta(seconds=float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()])
    except OverflowError:
        raise UsageError(f"not a duration: {value!r} is too long") from None


def parse_size(value: str | int) -> int:
    """``"10GB"`` (10**10), ``"10GiB"`` (10 * 2**30), ``"500M"``, or a number of bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise UsageError(f"not a size: {value!r} (use e.g. 500MB, 10GiB)")
    power = " kmgtp".index(m.group(2).lower() or " ")
    base = 1024 if m.group(3) else 1000
    return int(Decimal(m.group(1)) * base**power)
