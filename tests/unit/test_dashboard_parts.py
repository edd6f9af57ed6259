"""The dashboard's pure parts: the chart's geometry and ticks, human text, contrast of
every colour the stylesheet uses, the shared palette, the cached health probe."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from pathlib import Path

import pytest

from hometier import palette
from hometier.service.dashboard.explain import explain
from hometier.service.dashboard.summary import (
    GB,
    Dashboard,
    DayPoint,
    byte_ticks,
    make_chart,
    money_tick,
    nice_step,
    stamp,
    tick_label,
    tidy,
)
from hometier.service.outages import HealthCheck

CSS = (
    Path(__file__).parents[2] / "src/hometier/service/dashboard/static/dashboard.css"
).read_text()


# --- the chart ---------------------------------------------------------------------


@pytest.mark.parametrize("top", [1, 700, 1023, 1024, 5 * 2**20 + 3, 13 * GB, 7 * 2**40, 10**18])
def test_byte_ticks_are_round_and_cover_the_top(top: int) -> None:
    ticks, axis_top = byte_ticks(top)
    assert ticks[0] == 0 and ticks[-1] == axis_top >= top
    assert 2 <= len(ticks) <= 7
    steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    step = ticks[1] - ticks[0]
    for value in ticks[1:]:
        number = tick_label(value, step).split()[0]
        # 1, 2, 2.5 or 5 times a power of ten, in one unit: whole numbers or one decimal.
        assert re.fullmatch(r"\d+(\.5)?", number), (top, tick_label(value, step))


def test_nice_steps_and_money_ticks() -> None:
    assert [nice_step(t) for t in (4, 9, 38, 0.037)] == [1, 2.5, 10, 0.01]
    assert money_tick(0) == "$0" and money_tick(25, 5) == "$25"
    assert money_tick(0.0075, 0.0025) == "$0.0075"


def _points(values: list[tuple[int, int, int]]) -> list[DayPoint]:
    start = dt.date(2025, 12, 30)
    return [DayPoint(start + dt.timedelta(days=i), *v) for i, v in enumerate(values)]


def test_the_chart_stacks_steps_and_draws_cost() -> None:
    pts = _points(
        [(10 * GB, 0, 0), (10 * GB, 0, 0), (2 * GB, 8 * GB, 3 * GB), (2 * GB, 8 * GB, 3 * GB)]
    )
    chart = make_chart(pts, Dashboard(price_posix=0.30, price_object=0.023), days=7)
    kinds = {s.key: s.kind for s in chart.series}
    assert kinds == {"hot": "area", "stored": "area", "archived": "line", "cost": "cost"}
    for s in chart.series:
        # Steps: only horizontal and vertical moves after the first point.
        moves = re.findall(r"[MHVZ]", s.path)
        assert moves[0] == "M" and set(moves[1:]) <= {"H", "V", "Z"}, s.path
    hot = next(s for s in chart.series if s.key == "hot")
    assert hot.path.endswith("Z")
    # The right axis is money, the left bytes, both from zero, round.
    assert chart.y_ticks[0][1] == "0" and chart.cost_ticks[0][1] == "$0"
    assert all(label.endswith("GiB") for _, label in chart.y_ticks[1:])
    assert chart.cost_ticks[-1][0] <= chart.top + 0.5
    # Dates are people's dates; the ISO is kept for the title, to the day.
    assert [label for _, label, _ in chart.x_labels] == ["30 Dec 2025", "1 Jan 2026", "2 Jan 2026"]
    assert chart.x_labels[0][2] == "2025-12-30"
    assert len(chart.columns) == 4 and "$" in chart.columns[0][2]
    assert "3 Dec" not in chart.columns[0][2] and "T" not in chart.columns[0][2].split(":")[0]


def test_no_iso_with_microseconds_reaches_a_person() -> None:
    when = dt.datetime(2025, 3, 1, 12, 5, 7, 123456, tzinfo=dt.UTC)
    assert stamp(when) == "1 Mar 2025, 12:05 UTC"
    text = tidy(f"finished at {when.isoformat()} snapshot {'0f' * 32} of pack {'ab' * 32}")
    assert "123456" not in text and "T12:05" not in text
    assert "0f0f0f0f0f0f…" in text and "ab" * 32 not in text


# --- human errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "recorded", "sentence"),
    [
        (
            "StoreUnavailable: Generic S3 error: Error after 10 retries in 2.1s, max_retries:10, "
            "retry_timeout:180s, source:error sending request for url "
            "(http://127.0.0.1:4555/bucket/packs/ab/abcdef) [reference 0badcafe]",
            None,
            "Object storage could not be reached.",
        ),
        (
            "RestoreFailed('carol', 'blob 3f… not found in the repository')",
            {"reason": "damaged", "reference": "1a2b3c4d"},
            "Part of the archive is damaged.",
        ),
        ("OSError(28, 'No space left on device')", None, "The home volume is full."),
        ("<object at 0x7f>", None, "The operation failed; the details say where."),
    ],
)
def test_errors_become_one_sentence_and_a_reference(raw, recorded, sentence) -> None:
    got = explain(raw, recorded)
    assert got.sentence == sentence
    for leak in ("http://", "packs/", "0x7f", "RestoreFailed(", "OSError("):
        assert leak not in got.sentence
    if recorded or "reference" in raw:
        assert got.reference in ("0badcafe", "1a2b3c4d")
    assert got.detail  # the whole text, for the details toggle


# --- colours ---------------------------------------------------------------------------


def _vars(block: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", block))


def _schemes() -> dict[str, dict[str, str]]:
    light = CSS.split("@media (prefers-color-scheme: dark)")[0]
    dark = CSS.split("@media (prefers-color-scheme: dark)")[1].split("\n}\n")[0]
    return {"light": _vars(light), "dark": _vars(dark)}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_colour_passes_wcag_aa(scheme: str) -> None:
    v = _schemes()[scheme]
    pairs = {
        "body": ("fg", "bg"),
        "muted": ("muted", "bg"),
        "muted on card": ("muted", "card"),
        "muted on table head": ("muted", "th-bg"),
        "link": ("link", "bg"),
        "link on card": ("link", "card"),
        "badge active": ("badge-active", "card"),
        "badge archived": ("badge-archived", "card"),
        "badge archiving": ("badge-busy", "card"),
        "badge exempt": ("badge-muted", "card"),
        "badge failed": ("danger-fg", "danger"),
        "primary button": ("primary-fg", "primary"),
        "error text": ("bad", "bad-bg"),
        "error on card": ("bad", "card"),
        "saving": ("good", "card"),
        "navbar": ("nav-fg", "nav-bg"),
        "flash": ("fg", "flash-bg"),
        "cost axis": ("tier-cost", "card"),
    }
    ratios = {name: palette.contrast(v[a], v[b]) for name, (a, b) in pairs.items()}
    low = {name: round(r, 2) for name, r in ratios.items() if r < 4.5}
    print(scheme, {k: round(r, 2) for k, r in sorted(ratios.items())})
    assert not low, low
    # The badge that read 4.29:1 before.
    assert ratios["badge active"] >= 4.5


def test_the_stylesheet_uses_the_shared_palette() -> None:
    schemes = _schemes()
    for key, colour in {
        "posix": palette.POSIX,
        "object": palette.OBJECT,
        "cost": palette.COST,
    }.items():
        assert schemes["light"][f"tier-{key}"].lower() == colour.light
        assert schemes["dark"][f"tier-{key}"].lower() == colour.dark
    assert "--tier-posix:#b4450f" in palette.css_variables()
    assert palette.contrast("#000000", "#ffffff") == pytest.approx(21)


# --- the health probe ---------------------------------------------------------------


def test_health_is_cached_bounded_and_shared_under_a_storm() -> None:
    calls = {"db": 0, "store": 0}
    release = threading.Event()

    def db() -> None:
        calls["db"] += 1

    def store() -> None:
        calls["store"] += 1
        release.wait(10)  # a hung S3: never answers within the timeout

    now = [100.0]
    health = HealthCheck({"database": db, "store": store}, timeout=0.3, ttl=5, clock=lambda: now[0])
    # HealthCheck's deadline uses the clock too: move it along in real time.
    real = time.monotonic
    start = real()
    health.clock = lambda: now[0] + (real() - start)
    results = []
    threads = [threading.Thread(target=lambda: results.append(health.check())) for _ in range(40)]
    began = real()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = real() - began
    assert took < 3, took
    assert all(not r.ok and r.part("database").ok and not r.part("store").ok for r in results)
    assert "no answer within 0.3 s" in results[0].part("store").message
    assert health.probe_count == 2  # forty callers, one probe of each part
    now[0] += 10  # past the TTL: the hung store probe is still in flight, not started twice
    health.check()
    assert calls["store"] == 1 and calls["db"] == 2
    release.set()
    health.close()
