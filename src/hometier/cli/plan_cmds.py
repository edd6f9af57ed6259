"""``hometier plan``: a dry run that changes nothing; what archiving would move and save.

It walks the homes (metadata, plus a small sample of contents), asks the Hub for
activity when one is configured, and reports per idle threshold as a table, ``--json``
or a self-contained ``--html`` page. It never opens the state database nor the
repository, and writes nothing but the ``--html`` file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import html
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich import box
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from traitlets import Dict, Float, Integer, Unicode
from traitlets.config import Configurable

from hometier.cli import replay_cmds
from hometier.cli.output import emit_json, err, human, out
from hometier.config import Archiver, Hometier
from hometier.errors import UsageError
from hometier.lifecycle import plan as planning
from hometier.lifecycle.activity import HubClient, HubUser
from hometier.lifecycle.policy import Policy
from hometier.lifecycle.prices import PRICES_DATE, PRICES_SOURCE, make_prices, tier_table
from hometier.lifecycle.units import parse_size
from hometier.palette import NEUTRAL, OBJECT, POSIX
from hometier.repo.chunker import Chunking

METHOD = (
    "compression and dedup measured on a sample of file sizes: every size holding 0.5% "
    "of the bytes or more, plus sizes drawn with probability proportional to size; for "
    "each, up to 16 of its files read (files above 2 MiB as one 2 MiB window), cut by "
    "FastCDC and compressed with zstd level 3 as hometier stores them, copies counted "
    "once; ratio by Horvitz-Thompson, tolerance = 1.96 standard errors (about 95%) of "
    "the choice of sizes"
)
NOTES = (
    "Estimates are from a sample; dedup between files of different sizes is not seen "
    "(the stored size then errs high), nor dedup against snapshots already stored.",
    "Costs are storage only: requests, retrievals and minimum storage durations are "
    "ignored. Provisioned volumes (EBS, PD, Filestore) save only once resized.",
    "Bytes are apparent file sizes (hard links once); directories and tree metadata "
    "are not counted. Exemptions and leases live in the database, which plan does not "
    "open: homes they protect are counted as movable.",
)


class Plan(Configurable):
    """``hometier plan``: idle thresholds, price tiers, sample size (``c.Plan.*``)."""

    thresholds = Unicode(
        planning.DEFAULT_THRESHOLDS, help="Idle thresholds to report, comma-separated."
    ).tag(config=True)
    posix_tier = Unicode(
        "efs-standard", help="Price tier of the homes volume (see `hometier plan --tiers`)."
    ).tag(config=True)
    object_tier = Unicode("s3-standard", help="Price tier of the archive bucket.").tag(config=True)
    posix_price_per_gb = Float(
        None, allow_none=True, help="USD per GiB-month of the homes volume (overrides the tier)."
    ).tag(config=True)
    object_price_per_gb = Float(
        None, allow_none=True, help="USD per GiB-month of the bucket (overrides the tier)."
    ).tag(config=True)
    posix_prices = Dict(
        value_trait=Float(),
        help="POSIX tiers added or repriced: name → USD per GiB-month.",
    ).tag(config=True)
    object_prices = Dict(
        value_trait=Float(),
        help="Object tiers added or repriced: name → USD per GiB-month.",
    ).tag(config=True)
    sample_mb = Integer(256, help="Most MiB of file contents read for the estimate.").tag(
        config=True
    )
    sample_sizes = Integer(2000, help="Most distinct file sizes sampled for the estimate.").tag(
        config=True
    )
    seed = Integer(0, help="Seed of the sample (same seed, same tree: same sample).").tag(
        config=True
    )
    scan_workers = Integer(8, help="Homes walked in parallel.").tag(config=True)


def parse_now(value: str | None) -> dt.datetime:
    if not value:
        return dt.datetime.now(dt.UTC)
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now must be an ISO 8601 time, not {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _hub_users(arch: Archiver) -> dict[str, HubUser] | None:
    if not arch.hub_api_url:
        return None
    if not arch.hub_api_token:
        raise UsageError("hub_api_url is set but no token: set HOMETIER_HUB_TOKEN")
    return {u.name: u for u in HubClient(arch.hub_api_url, arch.hub_api_token).users()}


def cmd_plan(args: argparse.Namespace, cfg: Hometier) -> int:
    conf = Plan(config=cfg.config)
    if args.tiers:
        return _print_tiers(args, conf)
    arch = Archiver(config=cfg.config)
    prices = make_prices(
        args.posix_tier or conf.posix_tier,
        args.object_tier or conf.object_tier,
        posix_price=conf.posix_price_per_gb,
        object_price=conf.object_price_per_gb,
        posix_prices=conf.posix_prices,
        object_prices=conf.object_prices,
    )
    thresholds = planning.parse_thresholds(args.thresholds or conf.thresholds)
    now = parse_now(args.now)
    policy = Policy(min_size=parse_size(arch.min_size), max_size=parse_size(arch.max_size))
    replay = replay_cmds.load(args, now if args.now else None) if args.replay else None
    hub = None if args.no_hub or replay else _hub_users(arch)
    root = args.root or cfg.homes
    sample_mb = conf.sample_mb if args.sample_mb is None else args.sample_mb
    workers = args.workers or conf.scan_workers
    with _progress() as bars:
        scan = planning.scan_homes(
            root,
            cfg.home_template,
            workers=workers,
            sample_sizes=args.sample_sizes or conf.sample_sizes,
            seed=conf.seed if args.seed is None else args.seed,
            on_start=bars.scan_start,
            on_home=bars.home_done,
            on_files=bars.files_seen,
        )
        readings = None
        if replay:
            everyone = set(range(len(scan.homes)))
            if sample_mb > 0 and everyone:
                sample = planning.read_sample(
                    scan, [everyone], budget=sample_mb * 1024 * 1024, workers=cfg.workers
                )
                ratio = planning.estimate(sample, everyone, everyone).ratio
            else:
                ratio = 1.0
        elif sample_mb > 0:
            _, sets = planning.decide(scan, now, thresholds, hub, policy)
            readings = planning.read_sample(
                scan,
                sets,
                budget=sample_mb * 1024 * 1024,
                workers=cfg.workers,
                on_start=bars.read_start,
                on_bytes=bars.bytes_read,
            )
    if replay:
        return _replay(args, replay, scan, ratio, thresholds, prices)
    result = planning.make_plan(
        scan,
        readings,
        now,
        thresholds,
        prices,
        hub=hub,
        hub_url=arch.hub_api_url if hub is not None else None,
        policy=policy,
    )
    doc = plan_document(result)
    if args.html:
        try:
            Path(args.html).write_text(render_html(doc), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.html}: {exc.strerror or exc}") from exc
    if args.json:
        emit_json(doc)
    else:
        print_plan(doc)
        if args.html:
            err.print(f"HTML report written to {args.html}", highlight=False)
    return 0


def _replay(
    args: argparse.Namespace,
    replay: replay_cmds.Replay,
    scan: planning.HomesScan,
    ratio: float,
    thresholds: list[tuple[str, dt.timedelta]],
    prices: Any,
) -> int:
    doc = replay_cmds.run_replay(replay, scan, ratio, thresholds, prices)
    if args.html:
        try:
            Path(args.html).write_text(replay_cmds.render_html(doc, CSS), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.html}: {exc.strerror or exc}") from exc
    if args.json:
        emit_json(doc)
    else:
        replay_cmds.print_replay(doc)
    return 0


def _print_tiers(args: argparse.Namespace, conf: Plan) -> int:
    table = tier_table(conf.posix_prices, conf.object_prices)
    if args.json:
        emit_json(
            {
                "date": PRICES_DATE,
                "source": PRICES_SOURCE,
                "tiers": [
                    {"name": t.name, "kind": t.kind, "price_per_gb": t.price_per_gb}
                    for t in table.values()
                ],
            }
        )
        return 0
    t = Table("tier", "kind", "USD/GiB-month", "what")
    for tier in table.values():
        t.add_row(tier.name, tier.kind, f"{tier.price_per_gb:.4f}", tier.description)
    out.print(t)
    err.print(f"Prices: {PRICES_SOURCE}.", highlight=False)
    return 0


# --- progress ------------------------------------------------------------------------


class _Bars:
    """Callbacks for the scan and the sample; a rich progress display on a terminal."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.homes = self.total = self.files = 0
        self.task: TaskID | None = None

    def _show(self, detail: str, **kw: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, detail=detail, **kw)

    def scan_start(self, total: int) -> None:
        self.total = total
        if self.progress is not None:
            self.task = self.progress.add_task("scanning homes", total=total, detail="")

    def home_done(self, home: planning.HomeScan) -> None:
        with self.lock:
            self.homes += 1
            self._show(
                f"{self.homes}/{self.total} homes, {self.files:,} files", completed=self.homes
            )

    def files_seen(self, n: int) -> None:
        with self.lock:
            self.files += n
            self._show(f"{self.homes}/{self.total} homes, {self.files:,} files")

    def read_start(self, total: int) -> None:
        self.total, self.files = total, 0
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task("reading sample", total=max(total, 1), detail="")

    def bytes_read(self, n: int) -> None:
        with self.lock:
            self.files += n
            self._show(f"{human(self.files)} of {human(self.total)}", completed=self.files)


@contextlib.contextmanager
def _progress() -> Iterator[_Bars]:
    if not err.is_terminal:
        yield _Bars(None)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with bar:
        yield _Bars(bar)


# --- the document (the --json output; the table and the page are made from it) --------


def shown(name: str) -> str:
    """A name as text: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def plan_document(p: planning.Plan) -> dict[str, Any]:
    """Every figure of the plan as plain JSON types."""
    scan, prices = p.scan, p.prices
    r = p.readings
    chunking = Chunking()
    homes = []
    for h, f, at in zip(scan.homes, p.facts, p.moved_at, strict=True):
        idle = (p.now - f.last_activity).total_seconds() if f.last_activity else None
        homes.append(
            {
                "name": shown(h.name),
                "user": shown(h.user),
                "files": h.files,
                "bytes": h.bytes,
                "allocated_bytes": h.allocated,
                "newest_file_time": _iso(h.newest),
                "last_activity": _iso(f.last_activity),
                "activity_source": f.activity_source,
                "server_running": f.server_running,
                "idle_seconds": 0 if f.server_running else idle,
                "archived": h.archived,
                "other_fs_dirs": h.other_fs,
                "unreadable_dirs": h.unreadable,
                "moves_at": at,
            }
        )
    rows = []
    for row in p.rows:
        e = row.estimate
        rows.append(
            {
                "threshold": row.label,
                "seconds": row.after.total_seconds(),
                "homes": row.homes,
                "files": row.files,
                "bytes": row.bytes,
                "allocated_bytes": row.allocated,
                "ratio": e.ratio,
                "ratio_tolerance": e.tolerance,
                "ratio_basis": e.basis,
                "sample": {"sizes": e.sizes, "files": e.files, "bytes": e.bytes_read},
                "stored_bytes": round(row.stored),
                "stored_bytes_low": round(row.stored_low),
                "stored_bytes_high": round(row.stored_high),
                "posix_bytes_after": scan.bytes - row.bytes,
                "cost_before": round(row.cost_before, 4),
                "cost_after": round(row.cost_after, 4),
                "cost_after_posix": round(row.cost_after_posix, 4),
                "cost_after_object": round(row.cost_after - row.cost_after_posix, 4),
                "cost_after_low": round(row.cost_after_low, 4),
                "cost_after_high": round(row.cost_after_high, 4),
                "saving": round(row.saving, 4),
            }
        )
    return {
        "root": shown(scan.root),
        "now": p.now.isoformat(),
        "scan": {
            "homes": len(scan.homes),
            "archived_homes": sum(h.archived for h in scan.homes),
            "files": scan.files,
            "bytes": scan.bytes,
            "allocated_bytes": scan.allocated,
            "seconds": round(scan.seconds, 3),
            "skipped": {shown(k): v for k, v in scan.skipped.items()},
            "other_fs_dirs": sum(h.other_fs for h in scan.homes),
            "unreadable_dirs": sum(h.unreadable for h in scan.homes),
        },
        "activity": {
            "hub_api_url": p.hub_url,
            "running_servers": sum(f.server_running for f in p.facts),
        },
        "estimate": {
            "method": METHOD if r is not None else "no sample read: ratio 1.0 assumed",
            "confidence": 0.95,
            "seed": scan.sample.seed,
            "max_sizes": scan.sample.k,
            "budget_bytes": r.budget if r is not None else 0,
            "sizes_read": len(r.sizes) if r is not None else 0,
            "files_read": r.files_read if r is not None else 0,
            "bytes_read": r.bytes_read if r is not None else 0,
            "window_bytes": planning.WINDOW,
            "chunking": {"min": chunking.min, "avg": chunking.avg, "max": chunking.max},
            "compression": "zstd level 3 (raw when it saves under 1/32)",
        },
        "prices": {
            "date": prices.date,
            "source": prices.source,
            "unit": "USD per GiB-month",
            "posix": {
                "tier": prices.posix.name,
                "price_per_gb": prices.posix.price_per_gb,
                "description": prices.posix.description,
            },
            "object": {
                "tier": prices.object.name,
                "price_per_gb": prices.object.price_per_gb,
                "description": prices.object.description,
            },
            "overridden": list(prices.overridden),
        },
        "notes": list(NOTES),
        "thresholds": rows,
        "homes": homes,
    }


# --- the table -----------------------------------------------------------------------


def _usd(x: float) -> str:
    return f"${x:,.2f}"


def print_plan(doc: dict[str, Any]) -> None:
    s, e, pr = doc["scan"], doc["estimate"], doc["prices"]
    out.print(
        f"{s['homes']} homes ({s['archived_homes']} archived already), {s['files']:,} files, "
        f"{human(s['bytes'])} on the volume, scanned in {s['seconds']:.1f} s; "
        f"idle judged at {doc['now']}",
        highlight=False,
    )
    table = Table(
        "idle ≥", "homes", "moves", "stored*", "ratio*", "$/mo now", "$/mo after", "saves",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        title=f"{pr['posix']['tier']} → {pr['object']['tier']}",
    )  # fmt: skip
    for r in doc["thresholds"]:
        table.add_row(
            r["threshold"],
            str(r["homes"]),
            human(r["bytes"]),
            human(r["stored_bytes"]),
            f"{r['ratio']:.2f}±{r['ratio_tolerance']:.2f}",
            _usd(r["cost_before"]),
            _usd(r["cost_after"]),
            _usd(r["saving"]),
        )
    out.print(table)
    out.print(
        f"* Estimates from a sample of {human(e['bytes_read'])} "
        f"({e['files_read']} files, {e['sizes_read']} sizes); ± is about 95%. "
        f"Prices in {pr['unit']}: {pr['posix']['tier']} {pr['posix']['price_per_gb']}, "
        f"{pr['object']['tier']} {pr['object']['price_per_gb']}: {pr['source']}.",
        highlight=False,
    )
    for note in doc["notes"]:
        out.print(f"Note: {note}", highlight=False)


# --- the page ------------------------------------------------------------------------

# The tiers' colours are the dashboard's (hometier.palette): one colour per tier everywhere.
CSS = (
    """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd}
th{text-align:left}.n{text-align:right;white-space:nowrap}
"""
    + f".posix{{fill:{POSIX.light}}}.object{{fill:{OBJECT.light}}}"
    + f".before{{fill:{NEUTRAL.light}}}.axis{{stroke:#999}}"
    + """
svg text{font:12px system-ui,sans-serif;fill:#222}.note{color:#555;font-size:12px}
"""
)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _bar_chart(title: str, rows: list[tuple[str, list[tuple[float, str, str]]]], fmt: Any) -> str:
    """Horizontal stacked bars: per row a list of (value, css class, tooltip)."""
    width, label_w, bar_h, gap = 640, 150, 22, 10
    top = max((sum(v for v, _, _ in parts) for _, parts in rows), default=0.0) or 1.0
    height = 30 + len(rows) * (bar_h + gap)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 120}" height="{height}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
    ]
    for i, (label, parts) in enumerate(rows):
        y = 20 + i * (bar_h + gap)
        svg.append(f'<text x="0" y="{y + 15}">{_e(label)}</text>')
        x = float(label_w)
        for value, css, tip in parts:
            w = value / top * (width - label_w)
            svg.append(
                f'<rect class="{css}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}">'
                f"<title>{_e(tip)}</title></rect>"
            )
            x += w
        total = sum(v for v, _, _ in parts)
        svg.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{_e(fmt(total))}</text>')
    svg.append(
        f'<line class="axis" x1="{label_w}" y1="12" x2="{label_w}" y2="{height - 4}"/></svg>'
    )
    return "".join(svg)


def _cells(*values: Any) -> str:
    return "".join(f'<td class="n">{_e(v)}</td>' for v in values)


def render_html(doc: dict[str, Any]) -> str:
    """One page, inline CSS and SVG, no script; every string from the tree is escaped."""
    s, e, pr = doc["scan"], doc["estimate"], doc["prices"]
    total = s["bytes"]
    byte_rows: list[tuple[str, list[tuple[float, str, str]]]] = [
        ("now", [(total, "posix", f"{human(total)} on {pr['posix']['tier']}")])
    ]
    cost_rows: list[tuple[str, list[tuple[float, str, str]]]] = []
    for r in doc["thresholds"]:
        if not cost_rows:
            cost_rows.append(("now", [(r["cost_before"], "posix", pr["posix"]["tier"])]))
        stay, stored = r["posix_bytes_after"], r["stored_bytes"]
        label = f"idle ≥ {r['threshold']}"
        byte_rows.append(
            (
                label,
                [
                    (stay, "posix", f"{human(stay)} stay on {pr['posix']['tier']}"),
                    (stored, "object", f"{human(stored)} stored in {pr['object']['tier']}"),
                ],
            )
        )
        spread = f"{_usd(r['cost_after_low'])} to {_usd(r['cost_after_high'])} in all"
        cost_rows.append(
            (
                label,
                [
                    (r["cost_after_posix"], "posix", f"{pr['posix']['tier']}"),
                    (r["cost_after_object"], "object", f"{pr['object']['tier']}; {spread}"),
                ],
            )
        )
    head = (
        "<tr><th>idle ≥</th><th>homes</th><th>files</th><th>would move</th>"
        "<th>stored (est.)</th><th>ratio (est.)</th><th>now / month</th>"
        "<th>after / month</th><th>saving / month</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_e(r['threshold'])}</td>"
        + _cells(
            r["homes"],
            f"{r['files']:,}",
            human(r["bytes"]),
            f"{human(r['stored_bytes'])} ± {human(r['stored_bytes_high'] - r['stored_bytes'])}",
            f"{r['ratio']:.3f} ± {r['ratio_tolerance']:.3f}",
            _usd(r["cost_before"]),
            _usd(r["cost_after"]),
            _usd(r["saving"]),
        )
        + "</tr>"
        for r in doc["thresholds"]
    )
    homes = "".join(
        f"<tr><td>{_e(h['name'])}</td><td>{_e(h['user'])}</td>"
        + _cells(f"{h['files']:,}", human(h["bytes"]))
        + f"<td>{_e(h['last_activity'] or '-')}</td><td>{_e(h['activity_source'] or '-')}"
        + f"{' (server running)' if h['server_running'] else ''}</td>"
        + f"<td>{_e(h['moves_at'] or '-')}</td></tr>"
        for h in doc["homes"]
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in doc["notes"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hometier plan: {_e(doc["root"])}</title>
<style>{CSS}</style></head><body>
<h1>hometier plan</h1>
<p>{s["homes"]} homes under <code>{_e(doc["root"])}</code> ({s["archived_homes"]} archived
already), {s["files"]:,} files, {_e(human(total))}; judged at {_e(doc["now"])}.
Hub: {_e(doc["activity"]["hub_api_url"] or "not configured")}.</p>
<h2>Bytes on the volume and in the bucket</h2>
{_bar_chart("Bytes on POSIX and in object storage per threshold", byte_rows, human)}
<p class="note"><svg width="12" height="12"><rect class="posix" width="12" height="12"/></svg>
POSIX ({_e(pr["posix"]["tier"])}) &nbsp;
<svg width="12" height="12"><rect class="object" width="12" height="12"/></svg>
object storage ({_e(pr["object"]["tier"])}), estimated</p>
<h2>Monthly cost</h2>
{_bar_chart("Monthly storage cost now and after archiving, per threshold", cost_rows, _usd)}
<table>{head}{body}</table>
<p class="note">Stored sizes are estimates from a sample of {_e(human(e["bytes_read"]))}
({e["files_read"]} files, {e["sizes_read"]} sizes); ± is about 95%.
Method: {_e(e["method"])}.</p>
<p class="note">Prices in {_e(pr["unit"])}: {_e(pr["posix"]["tier"])}
{pr["posix"]["price_per_gb"]}, {_e(pr["object"]["tier"])} {pr["object"]["price_per_gb"]};
{_e(pr["source"])}.</p>
<ul class="note">{notes}</ul>
<h2>Homes</h2>
<table><tr><th>folder</th><th>user</th><th>files</th><th>bytes</th><th>last activity</th>
<th>from</th><th>moves at idle ≥</th></tr>{homes}</table>
</body></html>
"""
