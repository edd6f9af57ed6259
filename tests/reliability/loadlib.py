"""Helpers of the load tests (``test_load_*.py``): small homes, a real service behind a real
JupyterHub on a given store and database, HTTP clients that time every call, percentiles
and the JSON reports under ``test-artifacts/load/``.

- ``LONG``: ``HOMETIER_LOAD_LONG=1`` runs the long variants (more homes, 60 s of API load);
  the default stays within CI's budget.
- ``make_small_home(path, user, seed)``: a home of a few KB (text, CSV, a nested file, an
  empty file, a symlink), every time set to the nanosecond; its ``notes.txt`` carries
  ``mark(user)``, and ``marks_in(body)`` finds whose marks a response holds.
- ``start_service(root, store=..., db=...)``: ``hometier serve --no-loop`` registered with a
  real JupyterHub (``configure_hub``), homes under ``root/homes``; the service starts
  first, then the Hub (as ``e2e.conftest_service.start_service`` does), and both are
  stopped by their PIDs in ``Service.close()``. Skips when the Hub's parts are missing.
- ``user_tokens(svc, users)``: the users created in the Hub and one API token each, as a
  user holds at login.
- ``Client``: one keep-alive HTTP connection to the service; ``call`` returns the status,
  the body and the seconds the call took, and reconnects after a broken connection.
- ``in_process_lifecycle(svc)``: a ``Lifecycle`` in this process on the service's homes,
  store and database (to archive many homes without an interpreter start each).
- ``percentiles(values)``, ``max_overlap(intervals)``, ``write_report(name, doc)``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e2e.conftest_service import start_service as e2e_start_service
from fixtures.hub import REPO
from fixtures.service import PREFIX, Service
from hometier.app import make_lifecycle
from hometier.config import Archiver, Hometier
from hometier.lifecycle.context import Lifecycle

LONG = os.environ.get("HOMETIER_LOAD_LONG", "").strip() not in ("", "0")
"""``HOMETIER_LOAD_LONG=1``: the long variants; the default stays within CI's budget."""
ARTIFACTS = REPO / "test-artifacts" / "load"

HUB_CONFIG = """
# Under load the Hub answers a token check for every new token the service sees: keep
# its own logging from costing more than the checks.
c.JupyterHub.log_level = "INFO"
"""


# --- homes -----------------------------------------------------------------------------

MARK = re.compile(rb"secret-of-([A-Za-z0-9_-]+)\.")
"""What ``mark(user)`` writes: found in a response, it names whose files it came from."""


def mark(user: str) -> str:
    return f"secret-of-{user}."


def marks_in(body: bytes) -> set[str]:
    """The users whose ``mark`` appears in ``body``."""
    return {m.decode() for m in MARK.findall(body)}


def make_small_home(path: Path, user: str, seed: int, *, kib: int = 4) -> int:
    """A home of about ``kib`` KiB in five entries; returns its bytes. Every file holds
    the user's name, so a file served to the wrong user shows."""
    path.mkdir(parents=True)
    line = f"notes of {user}, {mark(user)} (seed {seed})\n"
    notes = line * max(1, kib * 1024 // 2 // len(line))
    rows = "".join(f"{user},{i},{(seed * 7919 + i * 104729) % 1000003}\n" for i in range(kib * 12))
    (path / "notes.txt").write_text(notes)
    (path / "project").mkdir()
    (path / "project" / "data.csv").write_text(rows)
    (path / "project" / "empty").write_bytes(b"")
    os.symlink("../notes.txt", path / "project" / "notes-link")
    (path / "run.sh").write_text(f"#!/bin/sh\necho {user}\n")
    os.chmod(path / "run.sh", 0o755)
    # Times to the nanosecond, different for every home and entry, children first.
    base = 1_600_000_000_000_000_000 + seed * 1_000_003_001
    for i, rel in enumerate(
        ["project/notes-link", "project/data.csv", "project/empty", "notes.txt", "run.sh"]
    ):
        os.utime(path / rel, ns=(base + i * 7_777_777, base + i * 7_777_777), follow_symlinks=False)
    os.utime(path / "project", ns=(base + 99_999_999, base + 99_999_999))
    return len(notes) + len(rows) + len(f"#!/bin/sh\necho {user}\n")


# --- the service -----------------------------------------------------------------------


def start_service(root: Path, *, store: str, db: str, extra_config: str = "") -> Service:
    """A real ``hometier serve --no-loop`` on ``store`` and ``db``, registered with a real
    JupyterHub (see the module docstring); skips if the Hub's parts are missing."""
    return e2e_start_service(root, store=store, db=db, extra_config=HUB_CONFIG + extra_config)


def user_tokens(svc: Service, users: list[str], threads: int = 8) -> dict[str, str]:
    """Create ``users`` in the Hub and return one new API token of each."""
    for i in range(0, len(users), 500):
        svc.hub.create_users(*users[i : i + 500])
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(users, pool.map(svc.user_token, users), strict=True))


def in_process_lifecycle(svc: Service | dict[str, str], *, quarantine_for: str = "0") -> Lifecycle:
    """A ``Lifecycle`` in this process on the service's homes, store and database (or on
    those of an environment's ``HOMETIER_HOMES``/``_STORE``/``_DB``)."""
    env = svc.env if isinstance(svc, Service) else svc
    cfg = Hometier(homes=env["HOMETIER_HOMES"], store=env["HOMETIER_STORE"], db=env["HOMETIER_DB"])
    return make_lifecycle(cfg, Archiver(quarantine_for=quarantine_for, hub_api_url=""))


def service_log(svc: Service, chars: int = 4000) -> str:
    path = svc.root / "service.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# --- HTTP --------------------------------------------------------------------------------


class Client:
    """One keep-alive connection to the service, as one browser tab or spawn hook holds."""

    def __init__(self, svc: Service, timeout: float = 120.0) -> None:
        self.port = svc.port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def call(
        self, method: str, path: str, token: str | None, body: bytes | None = None
    ) -> tuple[int, bytes, float]:
        """``method PREFIX+path``: (status, body, seconds). A connection the server closed
        between two calls is opened again once (that retry is counted, not timed)."""
        headers = {"Authorization": f"token {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            began = time.monotonic()
            try:
                self.conn.request(method, PREFIX + path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
                self.reconnects += 1
                continue
            took = time.monotonic() - began
            if resp.will_close:
                self.close()
            return resp.status, data, took
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, token: str | None) -> tuple[int, Any, float]:
        status, data, took = self.call(method, path, token, b"{}" if method == "POST" else None)
        try:
            return status, json.loads(data or b"null"), took
        except ValueError:
            return status, data, took

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- figures -------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def percentiles(values: list[float], digits: int = 4) -> dict[str, float]:
    """count, mean, p50, p95, p99 and max (seconds, rounded)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant (an interval
    ending exactly when another starts does not overlap it)."""
    points = sorted(p for s, e in intervals for p in ((s, 1), (e, -1)))
    # At equal times the ends (-1) sort before the starts (+1).
    most = now = 0
    for _, step in points:
        now += step
        most = max(most, now)
    return most


def commit() -> str:
    """``git rev-parse --short HEAD`` (with ``+dirty`` for a changed tree), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def write_report(name: str, doc: dict[str, Any]) -> Path:
    """``test-artifacts/load/NAME.json``: the figures, with the commit and the machine."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    full = {
        "scenario": name,
        "variant": "long" if LONG else "ci",
        "commit": commit(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **doc,
    }
    path = ARTIFACTS / f"{name}{'-long' if LONG else ''}.json"
    path.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return path
