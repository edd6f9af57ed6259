"""``c.Archiver.archive_concurrency``: a cycle archives several homes at once, in
threads of one process sharing one repository and one database (SQLite and PostgreSQL,
SeaweedFS). Every home comes back byte for byte from the bucket; one home's failure is
that home's alone, and nothing of it is deleted."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from typing import Any

import pytest

from hometier.lifecycle import cycle
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.loop import run_cycle
from hometier.lifecycle.policy import Policy
from hometier.lifecycle.restoring import restore_home
from hometier.state import ACTIVE, ARCHIVED, queries

from .conftest import FakeClock, manifest

SHARED = os.urandom(300_000)
"""A file every home holds (a course's dataset): archives at once find it in flight."""


def test_a_cycle_archives_homes_at_once_and_each_comes_back(
    lifecycle: Lifecycle, make_home: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle.policy = Policy(inactive_after=dt.timedelta(days=30), max_per_cycle=20)
    lifecycle.archive_concurrency = 4
    lifecycle.quarantine_for = dt.timedelta(0)  # purged at the cycle's end: bucket restores
    users = [f"u{i:02d}" for i in range(9)]
    before: dict[str, dict[str, Any]] = {}
    for u in users:
        home = make_home(u)
        (home / "dataset.bin").write_bytes(SHARED)
        before[u] = manifest(home)
    clock.set(dt.datetime.now(dt.UTC) + dt.timedelta(days=40))

    # Count archives running at the same moment, and fail one home inside its backup.
    running, peak, lock = [0], [0], threading.Lock()
    real = cycle.backup

    def observed(*args: Any, **kw: Any) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if "u04" in os.fspath(args[1]):
                raise OSError(5, "Input/output error", "injected")
            return real(*args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(cycle, "backup", observed)
    report = run_cycle(lifecycle)

    print(f"archives at once: at most {peak[0]} of 4")
    assert peak[0] >= 2, "the homes were archived one after the other"
    outcomes = {r.user: r.outcome for r in report.results}
    assert [r.user for r in report.results] == sorted(outcomes)  # reported in chosen order
    assert outcomes.pop("u04", "failed") == "failed" and set(outcomes.values()) == {"archived"}
    assert len(outcomes) == 8
    assert any(e.startswith("u04:") for e in report.errors)
    # The failed home is untouched and still active.
    assert manifest(lifecycle.layout.path("u04")) == before["u04"]
    assert queries.get_home(lifecycle.db, "u04").state != ARCHIVED
    snaps = {u: queries.list_snapshots(lifecycle.db, u) for u in outcomes}
    assert all(len(s) == 1 for s in snaps.values())
    # Every archived home comes back from the bucket, byte for byte.
    for u in outcomes:
        assert queries.get_home(lifecycle.db, u).state == ARCHIVED
        path = lifecycle.layout.path(u)
        assert restore_home(lifecycle, u, f"login:{u}").source == "bucket"
        assert manifest(path) == before[u], u
        assert queries.get_home(lifecycle.db, u).state == ACTIVE
    shutil.rmtree(lifecycle.quarantine_root, ignore_errors=True)
