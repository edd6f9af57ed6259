"""``hometier plan --replay LOGINS``: the operator's own login history against policies.

Scans the homes as ``plan`` does (sizes, newest file times, a sample for the stored
ratio), reads the history (``lifecycle.replay.parse_logins``: CSV ``user,time`` or
JupyterHub's log) and replays it once per idle threshold and quarantine. Changes
nothing, opens no database and no repository; writes only the ``--html`` file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import os
import stat
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from hometier.cli.output import err, human, out
from hometier.errors import UsageError
from hometier.lifecycle import plan as planning
from hometier.lifecycle import replay as rp
from hometier.lifecycle.prices import Prices
from hometier.lifecycle.units import parse_duration

NOTES = (
    "Today's home sizes stand for every day of the history; a re-archive is counted as "
    "metadata only (edits between archives are not known).",
    "JupyterHub logs 'User logged in' when a user authenticates, not on every visit with "
    "a valid cookie: a history from its log shows fewer logins than there were, and the "
    "waits are then overestimated. Spawn lines ('took N seconds to start') help.",
    "Request prices are list prices recorded with the storage prices (same caveat).",
)
SHOWN_UNKNOWN = 10


def parse_quarantines(text: str) -> list[tuple[str, dt.timedelta]]:
    """``"0d,3d"`` → [("0d", 0), ("3d", 3 days)]: sorted, duplicates dropped, 0 allowed."""
    found: dict[dt.timedelta, str] = {}
    for part in text.split(","):
        if part.strip():
            d = parse_duration(part.strip())
            if d.total_seconds() < 0:
                raise UsageError(f"a quarantine time cannot be negative: {part.strip()!r}")
            found.setdefault(d, part.strip())
    if not found:
        raise UsageError("no quarantine time given (use e.g. 0d,3d)")
    return [(label, d) for d, label in sorted(found.items())]


class HistoryUnreadable(UsageError):
    """cannot read the login history {}: {}"""


class NoLogins(UsageError):
    """{}: no login found in {} lines ({} malformed; expected CSV user,time or JupyterHub's log){}"""


@dataclass
class Replay:
    """What ``--replay`` needs besides the scan, read and checked before the scan starts
    (a typo in a flag or a path should not wait for a scan of thousands of homes)."""

    path: Path
    history: rp.LoginHistory
    tz_name: str
    quarantines: list[tuple[str, dt.timedelta]]
    session: dt.timedelta
    start: float
    end: float


def _when(value: str, tz: dt.tzinfo, flag: str) -> float:
    t = rp.parse_time(value, tz)
    if t is None:
        raise UsageError(f"{flag} must be an ISO 8601 time, not {value!r}")
    return t


def load(args: argparse.Namespace, now: dt.datetime | None) -> Replay:
    """Check the flags and read the history; raises a ``UsageError`` (exit status 2) for
    a bad flag, a file it cannot read, or a file without a single login."""
    try:
        tz: dt.tzinfo = zoneinfo.ZoneInfo(args.tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"unknown time zone {args.tz!r}") from exc
    quarantines = parse_quarantines(args.quarantine)
    session = parse_duration(args.session)
    since = _when(args.since, tz, "--since") if args.since else None
    until = _when(args.until, tz, "--until") if args.until else None
    path = Path(args.replay)
    try:
        # A pipe is welcome (``--replay <(zcat hub.log.gz)``); a device (/dev/zero) is not.
        kind = os.stat(path).st_mode
        if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind)):
            raise HistoryUnreadable(args.replay, "not a file")
        with open(path, "rb") as f:
            history = rp.parse_logins(rp.bounded_lines(f), tz)
    except OSError as exc:
        raise HistoryUnreadable(args.replay, exc.strerror or exc) from exc
    if not history.logins:
        example = f"; {history.examples[0]}" if history.examples else ""
        raise NoLogins(args.replay, history.lines, history.malformed, example)
    first, last = history.first, history.last
    assert first is not None and last is not None
    start = since if since is not None else first
    end = until if until is not None else (now.timestamp() if now is not None else last)
    if end <= start:
        raise UsageError("the replay must end after it starts (check --since and --until)")
    return Replay(path, history, args.tz, quarantines, session, start, end)


def run_replay(
    r: Replay,
    scan: planning.HomesScan,
    ratio: float,
    thresholds: list[tuple[str, dt.timedelta]],
    prices: Prices,
) -> dict[str, Any]:
    """Replay every policy over the scanned homes, return the document (``--json``)."""
    history, start, end, session = r.history, r.start, r.end, r.session
    homes = {
        h.user: rp.ReplayHome(h.bytes, h.newest.timestamp() if h.newest else None)
        for h in scan.homes
    }
    unknown = sorted(u for u in history.times if u not in homes)
    rows = []
    for label, after in thresholds:
        for qlabel, keep in r.quarantines:
            policy = rp.ReplayPolicy(after, keep, session=session)
            res = rp.replay(homes, history, policy, start, end, ratio=ratio)
            rows.append(_row(label, qlabel, res, prices))
    return {
        "history": {
            "file": str(r.path),
            "lines": history.lines,
            "logins": history.logins,
            "malformed": history.malformed,
            "malformed_examples": history.examples,
            "users": len(history.times),
            "unknown_users": len(unknown),
            "unknown_examples": [planning_shown(u) for u in unknown[:SHOWN_UNKNOWN]],
            "time_zone": r.tz_name,
        },
        "start": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(),
        "end": dt.datetime.fromtimestamp(end, dt.UTC).isoformat(),
        "homes": len(homes),
        "bytes": scan.bytes,
        "ratio": ratio,
        "session_seconds": session.total_seconds(),
        "policies": rows,
        "notes": list(NOTES),
    }


def planning_shown(name: str, limit: int = 64) -> str:
    """A user name fit for a terminal: not UTF-8 as U+FFFD, control characters escaped
    (a history is input: no escape sequence reaches the operator's terminal), shortened."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row(label: str, qlabel: str, res: rp.ReplayResult, prices: Prices) -> dict[str, Any]:
    month = res.month(prices)
    waits = [w.bytes for w in res.waits]
    return {
        "threshold": label,
        "quarantine": qlabel,
        "posix_bytes_end": res.posix_end,
        "posix_bytes_without": res.total_bytes,
        "smaller": res.total_bytes / res.posix_end if res.posix_end else None,
        "posix_bytes_mean": sum(d.posix for d in res.days) / max(1, len(res.days)),
        "stored_bytes_end": round(res.days[-1].stored if res.days else 0),
        "archives": res.archives,
        "restores": res.restores,
        "logins": res.logins,
        "waits": len(res.waits),
        "waits_from_quarantine": sum(w.source == "quarantine" for w in res.waits),
        "restore_bytes": {
            "p50": rp.percentile(waits, 50),
            "p95": rp.percentile(waits, 95),
            "max": max(waits, default=0),
        },
        "month": {k: round(v, 4) for k, v in month.items()},
        "days": [
            {
                "at": dt.datetime.fromtimestamp(d.at, dt.UTC).isoformat(),
                "posix": d.posix,
                "stored": round(d.stored),
                "archived": d.archived,
            }
            for d in res.days
        ],  # fmt: skip
    }


def print_replay(doc: dict[str, Any]) -> None:
    h = doc["history"]
    out.print(
        f"{h['logins']:,} logins of {h['users']} users read from {h['file']} "
        f"({h['malformed']} malformed lines, {h['unknown_users']} users without a home); "
        f"{doc['homes']} homes, {human(doc['bytes'])}; replayed {doc['start']} → {doc['end']}",
        highlight=False,
    )
    for ex in h["malformed_examples"]:
        err.print(f"  skipped {ex}", highlight=False, markup=False)
    if h["unknown_users"]:
        err.print(
            "  users without a home (ignored): " + ", ".join(h["unknown_examples"]),
            highlight=False,
            markup=False,
        )
    t = Table(
        "idle", "quar.", "at end", "×", "archives", "waited", "restore p95", "$/mo", "now",
        box=box.SIMPLE_HEAD, padding=(0, 1),
        caption="at end: the homes volume when the history ends; ×: how much smaller than "
        "without archiving; waited: logins that found their home archived (from the "
        "quarantine); $/mo: the last 30 days, both tiers and requests; now: without",
    )  # fmt: skip
    for r in doc["policies"]:
        t.add_row(
            r["threshold"],
            r["quarantine"],
            human(r["posix_bytes_end"]),
            _times(r["smaller"]),
            str(r["archives"]),
            f"{r['waits']}/{r['logins']} ({r['waits_from_quarantine']})",
            human(r["restore_bytes"]["p95"]),
            f"${r['month']['total']:,.2f}",
            f"${r['month']['without']:,.2f}",
        )
    out.print(t)
    for note in doc["notes"]:
        out.print(f"Note: {note}", highlight=False)


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _times(x: float | None) -> str:
    return "all" if x is None else f"{x:.1f}"


def render_html(doc: dict[str, Any], css: str) -> str:
    """One page: a table and the volume's bytes per policy over the history (SVG)."""
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{e(v)}</td>'
            for v in (
                r["threshold"],
                r["quarantine"],
                human(r["posix_bytes_end"]),
                _times(r["smaller"]) + "×",
                r["archives"],
                f"{r['waits']} / {r['logins']}",
                f"${r['month']['total']:,.2f}",
                f"${r['month']['without']:,.2f}",
            )
        )
        + "</tr>"
        for r in doc["policies"]
    )
    h = doc["history"]
    notes = "".join(f"<li>{e(n)}</li>" for n in doc["notes"])
    skipped = "".join(f"<li><code>{e(x)}</code></li>" for x in h["malformed_examples"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hometier plan --replay</title>
<style>{css}</style></head><body>
<h1>hometier plan --replay</h1>
<p>{h["logins"]:,} logins of {h["users"]} users from <code>{e(h["file"])}</code>
({h["malformed"]} malformed lines, {h["unknown_users"]} users without a home), replayed
{e(doc["start"])} → {e(doc["end"])} over {doc["homes"]} homes ({e(human(doc["bytes"]))}).</p>
{_chart(doc)}
<table><tr><th>idle ≥</th><th>quarantine</th><th>volume at end</th><th>smaller</th>
<th>archives</th><th>logins waited</th><th>$/month after</th><th>$/month now</th></tr>
{rows}</table>
<ul class="note">{notes}</ul>
{f'<p class="note">Skipped lines:</p><ul class="note">{skipped}</ul>' if skipped else ""}
</body></html>
"""


COLORS = ("#3b6ea5", "#e08a2c", "#5a9e52", "#b54a4a", "#7b5ea7", "#8c6d31", "#3aa3a3")


def _chart(doc: dict[str, Any]) -> str:
    width, height, left, top, pw, ph = 760, 280, 70, 20, 500, 220
    top_y = max([doc["bytes"], *(d["posix"] for r in doc["policies"] for d in r["days"])]) or 1
    days = max((len(r["days"]) for r in doc["policies"]), default=1) or 1
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
        'role="img" aria-label="Bytes on the homes volume"><title>Bytes on the homes volume'
        "</title>"
    ]

    def xy(i: int, v: float) -> str:
        return f"{left + i / max(1, days - 1) * pw:.1f},{top + ph - v / top_y * ph:.1f}"

    y_now = top + ph - doc["bytes"] / top_y * ph
    svg.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{y_now:.1f}" y2="{y_now:.1f}" '
        'stroke="#9aa5b1" stroke-width="2"/>'
        f'<text x="{left + pw + 8}" y="{y_now + 4:.1f}">without archiving</text>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{html.escape(human(top_y))}</text>'
        f'<text x="{left - 6}" y="{top + ph}" text-anchor="end">0</text>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#999"/>'
        f'<text x="{left}" y="{top + ph + 16}">{html.escape(doc["start"][:10])}</text>'
        f'<text x="{left + pw}" y="{top + ph + 16}" text-anchor="end">'
        f"{html.escape(doc['end'][:10])}</text>"
    )
    for i, r in enumerate(doc["policies"]):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(xy(k, d["posix"]) for k, d in enumerate(r["days"]))
        label = f"idle {r['threshold']}, quarantine {r['quarantine']}"
        svg.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}">'
            f"<title>{html.escape(label)}</title></polyline>"
            f'<rect x="{left + pw + 8}" y="{top + 20 + i * 18}" width="12" height="4" '
            f'fill="{color}"/><text x="{left + pw + 24}" y="{top + 26 + i * 18}">'
            f"{html.escape(label)}</text>"
        )
    svg.append("</svg>")
    return "".join(svg)
