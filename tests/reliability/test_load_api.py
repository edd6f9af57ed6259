"""Load: 100 clients on the API of the real service at once, for a bounded time.

100 users, each with a small home in the bucket (half archived, half active with a
snapshot), each with their own JupyterHub token. 100 threads — one per user, each on its
own keep-alive connection — call the service in a closed loop (no pause between calls, so
100 requests are in flight at all times) for ``DURATION`` seconds, in a mix a hub's users
make, plus requests that must be refused:

| call | expected |
|---|---|
| ``GET /api/homes/ME`` | 200, ``user`` is ME |
| ``GET /api/homes/ME/snapshots`` | 200, ME's snapshot first |
| ``GET /api/homes/ME/snapshots/latest/tree?path=project`` | 200, the folder's three entries |
| ``GET /api/homes/ME/snapshots/latest/file?path=notes.txt`` | 200, exactly ME's file |
| ``GET /api/homes/ME/restore`` | 200 |
| ``GET /health`` (no token) | 200 |
| ``GET /api/homes/OTHER`` and OTHER's snapshots, tree, file | 403 |
| ``GET /api/homes/ME/snapshots/OTHER-SNAPSHOT-ID/file?path=notes.txt`` | 404 |
| ``GET /api/homes/ME`` with a token the Hub never issued | 401 (or 403) |

What must hold: zero 5xx, zero unexpected statuses, zero broken connections, and zero
cross-user data — every body is scanned for the per-user marks the homes' files carry
(``loadlib.mark``), and none may name a user other than the caller. The test prints
requests/s and p50/p95/p99/max latency (overall and per call) and writes them to
``test-artifacts/load/api.json``. CI: 12 s; ``HOMETIER_LOAD_LONG=1``: 60 s.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fixtures.service import Service
from hometier.engine import backup
from hometier.lifecycle.cycle import archive_home
from hometier.state import queries
from reliability.loadlib import (
    LONG,
    Client,
    in_process_lifecycle,
    make_small_home,
    marks_in,
    percentiles,
    service_log,
    start_service,
    user_tokens,
    write_report,
)

pytestmark = [pytest.mark.s3, pytest.mark.postgres, pytest.mark.hub, pytest.mark.slow]

CLIENTS = 100
DURATION = 60.0 if LONG else 12.0
MIX = {
    "own-home": 4,
    "own-snapshots": 3,
    "own-tree": 3,
    "own-file": 3,
    "own-restore-state": 1,
    "health": 1,
    "other-home": 1,
    "other-snapshots": 1,
    "other-tree": 1,
    "other-file": 1,
    "other-snapshot-id": 1,
    "bad-token": 1,
}
"""Call → weight in the mix (refused calls are about a quarter of it)."""


@dataclass
class Site:
    svc: Service
    users: list[str]
    tokens: dict[str, str]
    notes: dict[str, bytes]
    """Each user's ``notes.txt``, as archived."""
    snapshot: dict[str, str]
    """Each user's snapshot id."""


@pytest.fixture
def api_site(tmp_path: Path, s3_url: str, pg_url: str) -> Iterator[Site]:
    """The service and its Hub, 100 users with a home and a snapshot each, their tokens."""
    svc = start_service(tmp_path, store=s3_url, db=pg_url)
    try:
        users = [f"api{i:03d}" for i in range(CLIENTS)]
        notes = {}
        for i, user in enumerate(users):
            make_small_home(svc.homes / user, user, seed=1000 + i)
            notes[user] = (svc.homes / user / "notes.txt").read_bytes()
            assert marks_in(notes[user]) == {user}
        lc = in_process_lifecycle(svc)
        try:

            def prepare(i_user: tuple[int, str]) -> str:
                i, user = i_user
                if i % 2 == 0:  # archived: its files only in the bucket
                    result = archive_home(lc, user)
                    assert result.outcome == "archived", result
                    assert result.snapshot is not None
                    return result.snapshot
                # active, with a snapshot taken earlier
                snap = backup(lc.repo, svc.homes / user, user=user, workers=2)
                home = str(svc.homes / user)
                queries.get_or_create_home(lc.db, user, home, lc.now(), actor="test")
                return snap.id

            with ThreadPoolExecutor(4) as pool:
                snapshot = dict(zip(users, pool.map(prepare, enumerate(users)), strict=True))
        finally:
            lc.db.dispose()
        yield Site(svc, users, user_tokens(svc, users), notes, snapshot)
    finally:
        svc.close()


def _plan(site: Site, user: str, call: str, rng: random.Random) -> tuple[str, str | None, set[int]]:
    """(path, token, statuses expected) of one call by ``user``."""
    token: str | None = site.tokens[user]
    other = rng.choice(site.users)
    while other == user:
        other = rng.choice(site.users)
    me = f"/api/homes/{user}"
    them = f"/api/homes/{other}"
    match call:
        case "own-home":
            return me, token, {200}
        case "own-snapshots":
            return f"{me}/snapshots", token, {200}
        case "own-tree":
            return f"{me}/snapshots/latest/tree?path=project", token, {200}
        case "own-file":
            return f"{me}/snapshots/latest/file?path=notes.txt", token, {200}
        case "own-restore-state":
            return f"{me}/restore", token, {200}
        case "health":
            return "/health", None, {200}
        case "other-home":
            return them, token, {403}
        case "other-snapshots":
            return f"{them}/snapshots", token, {403}
        case "other-tree":
            return f"{them}/snapshots/latest/tree?path=project", token, {403}
        case "other-file":
            return f"{them}/snapshots/latest/file?path=notes.txt", token, {403}
        case "other-snapshot-id":
            sid = site.snapshot[other]
            return f"{me}/snapshots/{sid}/file?path=notes.txt", token, {404}
        case "bad-token":
            return me, f"not-a-hub-token-{user}", {401, 403}
    raise AssertionError(call)


def _check_body(site: Site, user: str, call: str, body: bytes) -> str | None:
    """What is wrong with a 200 answer of ``call`` (None: nothing)."""
    if call == "own-file":
        return None if body == site.notes[user] else "notes.txt differs from the archived one"
    doc = json.loads(body)
    if call == "own-home" and doc.get("user") != user:
        return f"home of {doc.get('user')!r}"
    if call == "own-snapshots":
        ids = [s["id"] for s in doc["snapshots"]]
        if not ids or ids[0] != site.snapshot[user]:
            return f"snapshots {ids}"
    if call == "own-tree":
        names = sorted(e["name"] for e in doc["entries"])
        if names != ["data.csv", "empty", "notes-link"]:
            return f"tree {names}"
    return None


def test_a_hundred_clients_get_only_their_own_data_and_no_5xx(api_site: Site) -> None:
    site = api_site
    calls, weights = zip(*MIX.items(), strict=True)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[tuple[str, int]] = Counter()
    unexpected: list[str] = []
    leaks: list[str] = []
    broken: list[str] = []
    reconnects = [0]
    lock = threading.Lock()
    gate = threading.Barrier(CLIENTS)
    bounds: dict[str, float] = {}

    def client(user: str, seed: int) -> None:
        rng = random.Random(seed)
        conn = Client(site.svc, timeout=60)
        try:
            gate.wait(60)
            bounds.setdefault("start", time.monotonic())
            end = bounds["start"] + DURATION
            while time.monotonic() < end:
                call = rng.choices(calls, weights)[0]
                path, token, expected = _plan(site, user, call, rng)
                try:
                    status, body, took = conn.call("GET", path, token)
                except OSError as exc:
                    with lock:
                        broken.append(f"{user} {call}: {type(exc).__name__}: {exc}")
                    continue
                foreign = marks_in(body) - {user}
                problem = None
                if status not in expected:
                    problem = f"{status} (expected {sorted(expected)}): {body[:200]!r}"
                elif status == 200:
                    problem = _check_body(site, user, call, body)
                with lock:
                    latencies[call].append(took)
                    statuses[(call, status)] += 1
                    if foreign:
                        leaks.append(f"{user} {call} {path}: data of {sorted(foreign)}")
                    if problem:
                        unexpected.append(f"{user} {call} {path}: {problem}")
        finally:
            reconnects[0] += conn.reconnects
            conn.close()

    threads = [
        threading.Thread(target=client, args=(u, i), name=f"client-{u}")
        for i, u in enumerate(site.users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION + 120)
    elapsed = time.monotonic() - bounds["start"]
    assert not any(t.is_alive() for t in threads), "a client is still running"

    every = [x for values in latencies.values() for x in values]
    fivexx = sum(n for (_, status), n in statuses.items() if status >= 500)
    report: dict[str, Any] = {
        "clients": CLIENTS,
        "duration_s": round(elapsed, 2),
        "think_time_s": 0,
        "database": "postgresql",
        "store": "s3 (SeaweedFS)",
        "requests": len(every),
        "requests_per_s": round(len(every) / elapsed, 1),
        "status_5xx": fivexx,
        "unexpected": len(unexpected),
        "cross_user": len(leaks),
        "broken_connections": len(broken),
        "reconnects": reconnects[0],
        "latency_s": percentiles(every),
        "by_call": {
            call: {
                "statuses": {
                    str(status): n for (c, status), n in sorted(statuses.items()) if c == call
                },
                **percentiles(latencies[call]),
            }
            for call in MIX
        },
    }
    path = write_report("api", report)
    lat = report["latency_s"]
    print(
        f"\n{CLIENTS} clients for {elapsed:.1f} s: {len(every)} requests, "
        f"{report['requests_per_s']} req/s; latency p50 {lat['p50'] * 1e3:.0f} ms, p95 "
        f"{lat['p95'] * 1e3:.0f} ms, p99 {lat['p99'] * 1e3:.0f} ms, max {lat['max'] * 1e3:.0f} ms; "
        f"5xx {fivexx}, unexpected {len(unexpected)}, cross-user {len(leaks)}, broken "
        f"{len(broken)} -> {path}"
    )
    for call in MIX:
        c = report["by_call"][call]
        print(
            f"  {call:18} n={c['count']:5} p50 {c['p50'] * 1e3:6.0f} ms  p99 "
            f"{c['p99'] * 1e3:6.0f} ms  {c['statuses']}"
        )
    assert not leaks, f"{len(leaks)} answers held another user's data: {leaks[:5]}"
    assert fivexx == 0, f"{fivexx} answers were 5xx\n{service_log(site.svc)}"
    assert not unexpected, f"{len(unexpected)} unexpected answers: {unexpected[:5]}"
    assert not broken, f"{len(broken)} calls broke: {broken[:5]}"
    assert all(latencies[c] for c in MIX), "some call was never made"
