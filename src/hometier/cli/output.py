"""Output helpers: JSON for scripts, rich tables and progress bars for people.

Every verb's ``--json`` document follows the same rules (``docs/reference/cli.md``):
times are ISO 8601 with their UTC offset (``2025-01-31T09:30:00+00:00``), durations are
seconds (a number), sizes are bytes, paths are text. ``to_json`` applies them to whatever
a verb hands over (dataclasses, datetimes, timedeltas, paths, bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def to_json(value: Any) -> Any:
    """``value`` as plain JSON types, by the rules in the module docstring."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # the state database's times are UTC
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [to_json(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return value


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(to_json(doc), indent=2, sort_keys=True, default=str) + "\n")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def when(t: dt.datetime | None) -> str:
    """A time for people: local minutes, no microseconds; ``-`` for none."""
    if t is None:
        return "-"
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone().strftime("%Y-%m-%d %H:%M")


def progress_columns(unit: str = "bytes") -> list[Any]:
    """What every bar shows: label, bar, percent, done/total, speed, elapsed and ETA."""
    # Loaded only for a bar on a terminal: every command would pay for it at start.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    amount: list[Any] = (
        [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    )
    return [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        *amount,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


class Bar:
    """One progress task: ``update(done, total)`` from any thread, ``phase(label)``."""

    def __init__(self, progress: Progress | None, label: str) -> None:
        self.progress = progress
        self.task = progress.add_task(label, total=None) if progress is not None else None

    def update(self, done: float, total: float | None = None, label: str | None = None) -> None:
        if self.progress is None or self.task is None:
            return
        kw: dict[str, Any] = {"completed": done}
        if total is not None:
            kw["total"] = max(total, done, 1)
        if label is not None:
            kw["description"] = label
        self.progress.update(self.task, **kw)

    def phase(self, label: str, total: float | None = None) -> None:
        if self.progress is None or self.task is None:
            return
        self.progress.reset(self.task, total=total, description=label)

    def finish(self) -> None:
        """Show the work as complete (some finish without reporting any progress, e.g. a
        home brought back from its quarantine by a few renames)."""
        if self.progress is None or self.task is None:
            return
        total = self.progress.tasks[0].total if self.progress.tasks else None
        self.update(total or 1, total or 1)

    def callback(self) -> Callable[[int, int], None]:
        return lambda done, total: self.update(done, total)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool, *, unit: str = "bytes") -> Iterator[Bar]:
    """A transient progress bar on stderr when it is a terminal (and ``enabled``: not
    ``--json``); otherwise a ``Bar`` that shows nothing, so callers need no ``if``."""
    if not enabled or not err.is_terminal:
        yield Bar(None, label)
        return
    from rich.progress import Progress

    bar = Progress(*progress_columns(unit), console=err, transient=True)
    with bar:
        yield Bar(bar, label)
