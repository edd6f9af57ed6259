"""The semester's figures: per policy, from the runs' raw documents; Markdown, HTML, SVG.

Figures (all per policy):

- POSIX bytes: the homes volume's used blocks (``statvfs``, as ``df`` counts them) each
  virtual day, next to the shadow volume's (the same homes and edits, no hometier);
- the bucket: bytes (a LIST of the repository each day), requests (hometier's store
  counters, and SeaweedFS's own ``SeaweedFS_s3_request_total`` as a cross-check);
- the month's cost: the last 30 days' average bytes on each tier at the price table's
  prices (``lifecycle/prices.py``), plus that window's requests and retrievals;
- logins that waited for a restore: p50/p95/max of the wait (POST to done, as the spawn
  hook waits) and of the restore itself (the service's own start and finish), overall
  and by decile of home size (deciles of the final sizes of every home);
- archives and restores per day; the final check.
"""

from __future__ import annotations

import html
import math
from typing import Any

from hometier.lifecycle.prices import Prices, monthly_cost, request_cost
from hometier.lifecycle.replay import percentile

DAY = 86400
WRITES = ("put", "list")
READS = ("get", "get_range", "head")
COLORS = ["#3b6ea5", "#e08a2c", "#5a9e52", "#b54a4a", "#7b5ea7", "#8c6d31", "#3aa3a3"]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n}"


def _req(day: dict[str, Any], kinds: tuple[str, ...]) -> int:
    return sum(int(day["store_requests"].get(k, 0)) for k in kinds)


def deciles(sizes: list[int]) -> list[int]:
    """The 9 boundaries between deciles of ``sizes``."""
    s = sorted(sizes)
    return [s[min(len(s) - 1, int(len(s) * q / 10))] for q in range(1, 10)] if s else []


def decile_of(size: int, bounds: list[int]) -> int:
    """1..10."""
    return 1 + sum(size > b for b in bounds)


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3) if values else 0.0,
    }


def summarize(
    run: dict[str, Any],
    baseline: list[dict[str, int]],
    bounds: list[int],
    prices: Prices,
    finals_day: int,
) -> dict[str, Any]:
    days = run["days"]
    last = days[-1]
    end_day = last["day"]
    base = {b["day"]: b for b in baseline}
    without_end = base[end_day]["used"]
    finals = next((d for d in days if d["day"] == finals_day), last)
    month = [d for d in days if d["day"] > end_day - 30]
    first = next((d for d in days if d["day"] == end_day - 30), days[0])
    posix_avg = sum(d["posix_used"] for d in month) / len(month)
    bucket_avg = sum(d["bucket_bytes"] for d in month) / len(month)
    without_avg = sum(base[d["day"]]["used"] for d in month) / len(month)
    writes = _req(last, WRITES) - _req(first, WRITES)
    reads = _req(last, READS) - _req(first, READS)
    read_bytes = sum(last["store_bytes"].get(k, 0) - first["store_bytes"].get(k, 0) for k in READS)
    cost = {
        "posix": monthly_cost(posix_avg, prices.posix),
        "object": monthly_cost(bucket_avg, prices.object),
        "requests": request_cost(prices.object, writes, reads, read_bytes),
        "without": monthly_cost(without_avg, prices.posix),
    }
    cost["total"] = cost["posix"] + cost["object"] + cost["requests"]
    waits = [w for w in run["waits"] if w["state"] == "done"]
    by_decile: dict[int, list[dict[str, Any]]] = {}
    for w in waits:
        by_decile.setdefault(decile_of(int(w["bytes"]), bounds), []).append(w)
    per_day_a: dict[int, int] = {}
    for a in run["archives"]:
        if a["outcome"] == "archived":
            per_day_a[int(a["t"] // DAY)] = per_day_a.get(int(a["t"] // DAY), 0) + 1
    per_day_r: dict[int, int] = {}
    for w in waits:
        per_day_r[int(w["t"] // DAY)] = per_day_r.get(int(w["t"] // DAY), 0) + 1
    archive_secs = [a["seconds"] for a in run["archives"] if a["outcome"] == "archived"]
    outcomes: dict[str, int] = {}
    for a in run["archives"]:
        outcomes[a["outcome"]] = outcomes.get(a["outcome"], 0) + 1
    mid = [w for d in (5, 6) for w in by_decile.get(d, [])]
    top = by_decile.get(10, [])
    return {
        "policy": run["policy"]["label"],
        "posix_end": last["posix_used"],
        "without_end": without_end,
        "smaller_end": without_end / max(1, last["posix_used"]),
        "posix_finals": finals["posix_used"],
        "without_finals": base[finals["day"]]["used"],
        "smaller_finals": base[finals["day"]]["used"] / max(1, finals["posix_used"]),
        "bucket_end": last["bucket_bytes"],
        "bucket_objects": last["bucket_objects"],
        "store_requests": last["store_requests"],
        "s3_requests": last["s3_requests"],
        "month": {k: round(v, 4) for k, v in cost.items()},
        "month_requests": {"writes": writes, "reads": reads, "read_bytes": read_bytes},
        "logins": run["logins"],
        "waited": len(run["waits"]),
        "failed_restores": len(run["waits"]) - len(waits),
        "from_quarantine": sum(w["source"] == "quarantine" for w in waits),
        "wait": stats([w["wait"] for w in waits]),
        "restore": stats([w["restore"] for w in waits if w["restore"] is not None]),
        "wait_median_home": stats([w["wait"] for w in mid]),
        "wait_top_decile": stats([w["wait"] for w in top]),
        "by_decile": {
            str(d): {
                "wait": stats([w["wait"] for w in ws]),
                "restore": stats([w["restore"] for w in ws if w["restore"] is not None]),
                "mean_bytes": sum(w["bytes"] for w in ws) / len(ws),
            }
            for d, ws in sorted(by_decile.items())
        },
        "archives": outcomes,
        "archive_seconds": stats(archive_secs),
        "archives_per_day": per_day_a,
        "restores_per_day": per_day_r,
        "cycles": run["cycles"],
        "final": run["final"],
        "errors": run["errors"],
        "seconds": run["seconds"],
        "load": {
            "min": min(run["load"], default=0),
            "mean": sum(run["load"]) / max(1, len(run["load"])),
            "max": max(run["load"], default=0),
        },
    }


def targets(summaries: list[dict[str, Any]], total_seconds: float) -> list[dict[str, Any]]:
    out = []
    for s in summaries:
        if s["policy"].startswith("30d"):
            out.append(
                {
                    "target": f"POSIX ≥ 10× smaller at the end ({s['policy']})",
                    "value": f"{s['smaller_end']:.1f}×",
                    "ok": s["smaller_end"] >= 10,
                }
            )
    mids = [w for s in summaries for w in [s["wait_median_home"]] if w["n"]]
    tops = [w for s in summaries for w in [s["wait_top_decile"]] if w["n"]]
    out.append(
        {
            "target": "p95 login wait ≤ 5 s, median home (deciles 5–6), every policy",
            "value": ", ".join(f"{w['p95']:.2f} s" for w in mids) or "no waits",
            "ok": all(w["p95"] <= 5 for w in mids),
        }
    )
    out.append(
        {
            "target": "p95 login wait ≤ 30 s, largest decile, every policy",
            "value": ", ".join(f"{w['p95']:.2f} s" for w in tops) or "no waits",
            "ok": all(w["p95"] <= 30 for w in tops),
        }
    )
    lost = sum(s["final"].get("files_lost", 0) for s in summaries)
    diffs = sum(
        s["final"].get(k, 0)
        for s in summaries
        for k in ("home_differences", "snapshot_differences", "snapshot_unexpected")
    )
    diffs += sum(s["final"].get("quarantine_differences", 0) for s in summaries)
    out.append(
        {
            "target": "0 files lost, 0 differences",
            "value": f"{lost} lost, {diffs} differences",
            "ok": lost == 0 and diffs == 0,
        }
    )
    out.append(
        {
            "target": "the run completes in under 20 minutes",
            "value": f"{total_seconds / 60:.1f} min",
            "ok": total_seconds < 1200,
        }
    )
    return out


# --- SVG ----------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def line_chart(
    title: str,
    series: list[tuple[str, list[tuple[float, float]], str]],
    *,
    y_fmt: Any = human,
    x_label: str = "day of the semester",
    width: int = 760,
    height: int = 300,
    marks: list[tuple[float, str]] | None = None,
) -> str:
    """Lines of (label, [(x, y)], color); a self-contained SVG with axes and a legend."""
    left, right, top, bottom = 80, 215, 28, 40
    xs = [x for _, pts, _ in series for x, _ in pts] or [0, 1]
    ys = [y for _, pts, _ in series for _, y in pts] or [0, 1]
    x0, x1 = min(xs), max(xs) or 1
    y1 = _nice(max(ys) or 1)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / max(1e-9, x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - y / y1 * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>"
        "<style>text{font:12px system-ui,sans-serif;fill:#222}.ax{stroke:#999}"
        ".grid{stroke:#e5e5e5}</style>"
        f'<text x="{left}" y="16" style="font-weight:600">{_e(title)}</text>'
    ]
    for k in range(5):
        y = y1 * k / 4
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_e(y_fmt(y))}</text>'
        )
    for k in range(6):
        x = x0 + (x1 - x0) * k / 5
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:.0f}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
    )
    for x, label in marks or []:
        out.append(
            f'<line class="ax" stroke-dasharray="3,3" x1="{px(x):.1f}" x2="{px(x):.1f}" '
            f'y1="{top}" y2="{top + ph}"/><text x="{px(x) + 3:.1f}" y="{top + 12}">{_e(label)}</text>'
        )
    out.append(
        f'<line class="ax" x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}"/>'
        f'<line class="ax" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>'
    )
    for i, (label, pts, color) in enumerate(series):
        if pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}">'
                f"<title>{_e(label)}</title></polyline>"
            )
        ly = top + 14 + i * 18
        out.append(
            f'<rect x="{left + pw + 12}" y="{ly - 9}" width="14" height="4" fill="{color}"/>'
            f'<text x="{left + pw + 32}" y="{ly - 3}">{_e(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _nice(v: float) -> float:
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def posix_chart(doc: dict[str, Any], only: list[str] | None = None) -> str:
    base = [(b["day"], b["used"]) for b in doc["baseline"]]
    series = [("without hometier", base, "#9aa5b1")]
    for i, run in enumerate(doc["runs"]):
        label = run["policy"]["label"]
        if only is not None and label not in only:
            continue
        pts = [(d["day"], d["posix_used"]) for d in run["days"]]
        series.append((f"with hometier, idle {label}", pts, COLORS[i % len(COLORS)]))
    marks = [(doc["trace"]["finals_day"], "finals end")]
    return line_chart("Bytes on the homes volume (POSIX)", series, marks=marks)


# --- Markdown -----------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summaries"]
    c = doc["corpus"]
    lines = [
        f"# Semester replay — {doc['started']}",
        "",
        f"{doc['users']} users ({_counts(doc['trace']['counts'])}), {doc['trace']['sessions']:,} "
        f"logins over {doc['trace']['days']} days (finals end on day {doc['trace']['finals_day']}); "
        f"{c['homes']} homes at the start, {c['files']:,} files, {human(c['bytes'])} "
        f"(median {human(c['home_bytes']['median'])}, largest {human(c['home_bytes']['max'])}). "
        f"Machine: {doc['machine']}; load average {doc['load_start']} at the start, "
        f"{doc['load_end']} at the end. Whole run: {doc['seconds'] / 60:.1f} min.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t['target']} | {t['value']} | {'✅' if t['ok'] else '❌'} |" for t in doc["targets"]
    ]
    lines += [
        "",
        "## Per policy",
        "",
        "| policy | POSIX at the end (without) | × smaller | at finals end (×) | bucket | "
        "$/month (without) | logins | waited | wait p50/p95/max | restore p50/p95/max | "
        "archives | lost | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in s:
        w, r, m = x["wait"], x["restore"], x["month"]
        lines.append(
            f"| {x['policy']} | {human(x['posix_end'])} ({human(x['without_end'])}) | "
            f"{x['smaller_end']:.1f} | {human(x['posix_finals'])} ({x['smaller_finals']:.1f}) | "
            f"{human(x['bucket_end'])} | {m['total']:.2f} ({m['without']:.2f}) | {x['logins']:,} | "
            f"{x['waited']} ({x['from_quarantine']} from quarantine) | "
            f"{w['p50']:.2f}/{w['p95']:.2f}/{w['max']:.2f} s | "
            f"{r['p50']:.2f}/{r['p95']:.2f}/{r['max']:.2f} s | "
            f"{x['archives'].get('archived', 0)} | {x['final'].get('files_lost', 0)} | "
            f"{x['load']['mean']:.1f} |"
        )
    lines += [
        "",
        "### Logins that waited: the median home and the largest decile; archives and "
        "restores per day",
        "",
        "| policy | median home (deciles 5–6): n, wait p50/p95/max | largest decile: n, wait "
        "p50/p95/max | archives/day (mean, max) | restores/day (mean, max) |",
        "|---|---|---|---|---|",
    ]
    for x in s:
        lines.append(
            f"| {x['policy']} | {_stats(x['wait_median_home'])} | {_stats(x['wait_top_decile'])} "
            f"| {_per_day(x['archives_per_day'], doc['trace']['days'])} "
            f"| {_per_day(x['restores_per_day'], doc['trace']['days'])} |"
        )
    lines += ["", "### Login waits by home-size decile (p95 wait, s)", ""]
    lines.append("| policy | " + " | ".join(f"d{d}" for d in range(1, 11)) + " |")
    lines.append("|---|" + "---|" * 10)
    for x in s:
        cells = [
            f"{x['by_decile'][str(d)]['wait']['p95']:.2f} (n={x['by_decile'][str(d)]['wait']['n']})"
            if str(d) in x["by_decile"]
            else "–"
            for d in range(1, 11)
        ]
        lines.append(f"| {x['policy']} | " + " | ".join(cells) + " |")
    lines += ["", "### The bucket and the month's cost", ""]
    lines.append("| policy | objects | requests (hometier: put/get+range/head/list/delete) | "
                 "SeaweedFS requests | month: POSIX + object + requests = total |")  # fmt: skip
    lines.append("|---|---|---|---|---|")
    for x in s:
        q, m = x["store_requests"], x["month"]
        mine = (
            "/".join(str(q.get(k, 0)) for k in ("put",))
            + "/"
            + str(q.get("get", 0) + q.get("get_range", 0))
            + "/"
            + "/".join(str(q.get(k, 0)) for k in ("head", "list", "delete"))
        )
        theirs = ", ".join(f"{k} {v}" for k, v in sorted(x["s3_requests"].items()))
        lines.append(
            f"| {x['policy']} | {x['bucket_objects']} | {mine} | {theirs} | "
            f"${m['posix']:.3f} + ${m['object']:.3f} + ${m['requests']:.4f} = ${m['total']:.3f} |"
        )
    lines += ["", "### The final check", ""]
    for x in s:
        f = x["final"]
        lines.append(
            f"- **{x['policy']}**: {f.get('homes', 0)} homes ({f.get('homes_on_volume_checked', 0)} on "
            f"the volume compared file by file, {f.get('archived_homes_checked', 0)} archived: their "
            f"recorded snapshot is their last version, {f.get('quarantines_checked', 0)} quarantines "
            f"compared), {f.get('snapshots', 0)} snapshots read back "
            f"({f.get('snapshot_entries', 0):,} entries, {f.get('distinct_contents_read', 0):,} distinct "
            f"contents hashed); every restore at login compared too "
            f"({x.get('restore_checks', {}).get('homes', 0)} homes); files lost: "
            f"{f.get('files_lost', 0)}, differences: {f.get('home_differences', 0)} in homes, "
            f"{f.get('snapshot_differences', 0)} in snapshots, {f.get('snapshot_unexpected', 0)} "
            f"unexpected snapshots. Cycles run: {x['cycles'].get('run', 0)} of "
            f"{x['cycles'].get('hourly_in_period', 0)} hourly ({x['cycles'].get('archived_unpredicted', 0)} "
            f"homes archived by a daily cycle the bound had not foreseen)."
        )
    if doc.get("estimates"):
        lines += ["", "### `hometier plan --replay` on the same history, for comparison", ""]
        lines.append(
            "| policy | estimated × smaller at the end | measured | estimated waits | measured |"
        )
        lines.append("|---|---|---|---|---|")
        for x, e in zip(s, doc["estimates"], strict=True):
            lines.append(
                f"| {x['policy']} | {e['smaller_end']:.1f} | {x['smaller_end']:.1f} | "
                f"{e['waits']} | {x['waited']} |"
            )
    errors = [e for x in s for e in x["errors"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errors[:30]]
    return "\n".join(lines) + "\n"


def _stats(w: dict[str, float]) -> str:
    if not w["n"]:
        return "none waited"
    return f"{w['n']}: {w['p50']:.2f}/{w['p95']:.2f}/{w['max']:.2f} s"


def _per_day(per: dict[Any, int], days: int) -> str:
    values = list(per.values())
    return f"{sum(values) / max(1, days):.1f}, {max(values, default=0)}"


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in c.items())


# --- HTML ---------------------------------------------------------------------------------

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd}
th{text-align:left}.n{text-align:right;white-space:nowrap}.note{color:#555;font-size:12px}
.ok{color:#2a7a2a}.bad{color:#b22}
"""


def render_html(doc: dict[str, Any], md_html_tables: str = "") -> str:
    s = doc["summaries"]
    charts = [posix_chart(doc)]
    bucket = [
        (x["policy"], [(d["day"], d["bucket_bytes"]) for d in run["days"]], COLORS[i % len(COLORS)])
        for i, (x, run) in enumerate(zip(s, doc["runs"], strict=True))
    ]
    charts.append(line_chart("Bytes in the bucket", bucket))
    for kind, key in (("Archives", "archives_per_day"), ("Restores at login", "restores_per_day")):
        series = []
        for i, x in enumerate(s):
            per = {int(k): v for k, v in x[key].items()}
            pts = [(d, per.get(d, 0)) for d in range(doc["trace"]["days"] + 1)]
            series.append((x["policy"], pts, COLORS[i % len(COLORS)]))
        charts.append(line_chart(f"{kind} per day", series, y_fmt=lambda v: f"{v:.0f}"))
    rows = "".join(
        f"<tr><td>{_e(t['target'])}</td><td>{_e(t['value'])}</td>"
        f'<td class="{"ok" if t["ok"] else "bad"}">{"met" if t["ok"] else "missed"}</td></tr>'
        for t in doc["targets"]
    )
    policy_rows = "".join(
        f"<tr><td>{_e(x['policy'])}</td>"
        + "".join(
            f'<td class="n">{_e(v)}</td>'
            for v in (
                human(x["posix_end"]),
                human(x["without_end"]),
                f"{x['smaller_end']:.1f}×",
                human(x["bucket_end"]),
                f"${x['month']['total']:.2f}",
                f"${x['month']['without']:.2f}",
                f"{x['waited']} / {x['logins']:,}",
                f"{x['wait']['p50']:.2f} / {x['wait']['p95']:.2f} / {x['wait']['max']:.2f}",
                f"{x['wait_median_home']['p95']:.2f}",
                f"{x['wait_top_decile']['p95']:.2f}",
                x["archives"].get("archived", 0),
                x["final"].get("files_lost", 0),
            )
        )
        + "</tr>"
        for x in s
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hometier: a semester replayed</title>
<style>{CSS}</style></head><body>
<h1>A semester on a {doc["users"]:,}-user hub, replayed</h1>
<p>{doc["trace"]["sessions"]:,} logins over {doc["trace"]["days"]} virtual days against the real
archiver loop, service, SeaweedFS and PostgreSQL; {doc["corpus"]["homes"]} homes at the start
({_e(human(doc["corpus"]["bytes"]))}). Load average {doc["load_start"]} → {doc["load_end"]};
{doc["seconds"] / 60:.1f} minutes in all.</p>
<table><tr><th>target</th><th>measured</th><th></th></tr>{rows}</table>
{charts[0]}
<table><tr><th>policy</th><th>POSIX at end</th><th>without</th><th>smaller</th><th>bucket</th>
<th>$/month</th><th>without</th><th>logins waited</th><th>wait p50/p95/max (s)</th>
<th>p95 median home</th><th>p95 largest decile</th><th>archives</th><th>files lost</th></tr>
{policy_rows}</table>
{"".join(charts[1:])}
<p class="note">Prices: {_e(doc["prices"]["posix"])} and {_e(doc["prices"]["object"])},
{_e(doc["prices"]["source"])}. Every figure is in the JSON next to this page.</p>
</body></html>
"""
