"""``parse_duration`` and ``parse_size``: the units of the configuration (``30d``, ``10GiB``).

Every bad value must be a ``UsageError`` (a clear message and exit code 2), never another
exception that the CLI would show as a traceback.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from hometier.errors import UsageError
from hometier.lifecycle.units import parse_duration, parse_size

DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30d", 30 * DAY),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", 14 * DAY),
        ("45s", timedelta(seconds=45)),
        ("45", timedelta(seconds=45)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("1.5h", timedelta(minutes=90)),
        ("0.1s", timedelta(milliseconds=100)),
        (" 2 D ", 2 * DAY),
        ("3H", timedelta(hours=3)),
        (60, timedelta(minutes=1)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_duration(value: str | int | float | timedelta, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "d",
        "30 days",
        "-5d",
        "+5d",
        "5y",
        "5ms",
        "1d2h",
        "1e3",
        "inf",
        "nan",
        "1,5h",
        "99999999999d",  # larger than timedelta can hold
    ],
)
def test_parse_duration_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10GB", 10 * 10**9),
        ("10GiB", 10 * 2**30),
        ("500M", 500 * 10**6),
        ("500MB", 500 * 10**6),
        ("500MiB", 500 * 2**20),
        ("1KiB", 1024),
        ("1Ki", 1024),
        ("1.5KB", 1500),
        ("2.01MB", 2_010_000),  # decimal, not 2009999 from binary floating point
        ("1.001KB", 1001),
        ("10 gb", 10 * 10**9),
        ("2T", 2 * 10**12),
        ("1P", 10**15),
        ("10B", 10),
        ("1024", 1024),
        ("0", 0),
        (" 7 kb ", 7000),
        (4096, 4096),
    ],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", ["", " ", "abc", "GB", "-1GB", "10XB", "1.2.3", "10 GB extra", "1e3", "10 bytes"]
)
def test_parse_size_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="not a size"):
        parse_size(value)


def test_the_messages_show_the_value_and_an_example() -> None:
    with pytest.raises(UsageError) as info:
        parse_duration("soon")
    assert info.value.get_message() == "not a duration: 'soon' (use e.g. 30d, 12h, 90m, 2w)"
    assert info.value.exit_code == 2
    with pytest.raises(UsageError) as info2:
        parse_size("big")
    assert "'big'" in info2.value.get_message() and "10GiB" in info2.value.get_message()
