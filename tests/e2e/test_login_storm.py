"""A login storm: 30 users' homes archived (quarantine purged, so every restore reads the
repository), then all 30 servers requested at once through the Hub API of a real
JupyterHub whose spawns restore through ``configure_hub``'s pre-spawn hook and a real
``hometier serve``. Every home comes back intact; the test prints the p50/p95/max time
from the spawn request to the server being ready.

The single-user servers run without JupyterLab and its companions (``LEAN_SERVER``):
the test needs only jupyter_server, and on a 2-CPU machine 30 JupyterLab starts at once
take ~100 s by themselves. Even so, most of the spawn-to-ready time is the 30 servers
starting, not the restores: the test prints the restore times too.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from e2e.conftest_service import (
    KiB,
    MiB,
    make_home,
    quarantine_dirs,
    request_spawn,
    service_log,
    start_service,
    tree_manifest,
)
from fixtures.service import Service
from hometier.app import make_lifecycle
from hometier.config import Archiver, Hometier
from hometier.lifecycle.cycle import archive_home, purge_quarantine
from treeutil import diff_trees

pytestmark = [pytest.mark.hub, pytest.mark.slow]

USERS = [f"storm{i:02d}" for i in range(30)]
STORM_TIMEOUT = 180.0

STORM_CONFIG = """
# 30 single-user servers starting at once on a small machine: give them time.
c.Spawner.start_timeout = 240
c.Spawner.http_timeout = 240
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
c.Spawner.environment = {"JUPYTER_CONFIG_DIR": LEAN_CONFIG_DIR}
"""

LEAN_SERVER = {
    "ServerApp": {
        "jpserver_extensions": {
            "jupyterlab": False,
            "jupyter_lsp": False,
            "jupyter_server_terminals": False,
            "notebook_shim": False,
        }
    }
}
"""A bare jupyter_server (the contents API and the Hub's extension): JupyterLab and
friends cost ~3 CPU-seconds per start, which 30 starts on 2 CPUs turn into minutes."""


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("storm")
    lean = root / "jupyter-config"
    lean.mkdir()
    (lean / "jupyter_server_config.json").write_text(json.dumps(LEAN_SERVER))
    config = f"LEAN_CONFIG_DIR = {str(lean)!r}\n" + STORM_CONFIG
    service = start_service(root, extra_config=config)
    try:
        yield service
    finally:
        service.close()


def _archive_all(svc: Service, users: list[str]) -> None:
    """Archive every home (the library the CLI uses, in this process, to save 30
    interpreter starts) and purge the quarantine as the loop does with
    ``quarantine_for = 0``."""
    cfg = Hometier(homes=str(svc.homes), store=svc.env["HOMETIER_STORE"], db=svc.env["HOMETIER_DB"])
    lc = make_lifecycle(cfg, Archiver(quarantine_for="0", hub_api_url=""))
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda u: archive_home(lc, u), users))
        assert [r.outcome for r in results] == ["archived"] * len(users), [
            (r.user, r.outcome, r.reason) for r in results if r.outcome != "archived"
        ]
        purge_quarantine(lc)
    finally:
        lc.db.dispose()
    for user in users:
        assert not quarantine_dirs(svc, user), f"{user}'s quarantine is still there"


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def test_thirty_logins_at_once_restore_every_home(svc: Service) -> None:
    originals: dict[str, dict[Any, Any]] = {}
    total = 0
    for i, user in enumerate(USERS):
        total += make_home(
            svc.homes / user,
            small_files=100,
            small_size=(KiB, 12 * KiB),
            big_files=(MiB + i * 37 * KiB,),
            folders=6,
            seed=100 + i,
        )
        originals[user] = tree_manifest(svc.homes / user)
    began = time.monotonic()
    _archive_all(svc, USERS)
    archived_in = time.monotonic() - began
    for user in USERS:
        assert not (svc.homes / user / "notes.md").exists(), f"{user}'s home is still on disk"
    svc.hub.create_users(*USERS)

    # Every spawn requested at once.
    requested: dict[str, float] = {}
    answers: dict[str, int] = {}
    gate = threading.Barrier(len(USERS))

    def spawn(user: str) -> None:
        gate.wait()
        requested[user] = time.monotonic()
        answers[user] = request_spawn(svc.hub, user, timeout=120)[0]

    storm_began = time.monotonic()
    storm_began_epoch = time.time()
    threads = [threading.Thread(target=spawn, args=(u,)) for u in USERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(code in (201, 202) for code in answers.values()), answers

    # Poll every server (one admin call lists them all) until all are ready.
    ready: dict[str, float] = {}
    failed: set[str] = set()
    deadline = storm_began + STORM_TIMEOUT
    while len(ready) + len(failed) < len(USERS) and time.monotonic() < deadline:
        try:
            models = svc.hub.users()
        except (TimeoutError, urllib.error.URLError) as exc:
            # A Hub busy with 30 spawns on 2 loaded CPUs may answer late; the deadline
            # decides, not one slow listing.
            print(f"the Hub did not list its users in time ({exc}); asking again")
            continue
        now = time.monotonic()
        for model in models:
            name = model["name"]
            if name not in requested or name in ready or name in failed:
                continue
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                ready[name] = now
            elif server is None and now - requested[name] > 5:
                failed.add(name)
        time.sleep(0.25)
    storm_seconds = time.monotonic() - storm_began

    times = [ready[u] - requested[u] for u in ready]
    print(
        f"\nlogin storm: {len(USERS)} users, {total / 1e6:.0f} MB in all, archived in "
        f"{archived_in:.1f} s; {len(ready)} ready, {len(failed)} failed, "
        f"{len(USERS) - len(ready) - len(failed)} still pending after {storm_seconds:.1f} s"
    )
    if times:
        print(
            f"spawn-to-ready: p50 {statistics.median(times):.1f} s, "
            f"p95 {_percentile(times, 95):.1f} s, max {max(times):.1f} s"
        )
    assert not failed, f"spawns failed: {sorted(failed)}\n{service_log(svc)}\n{svc.hub.log_tail()}"
    assert len(ready) == len(USERS), (
        f"not ready within {STORM_TIMEOUT:.0f} s: {sorted(set(USERS) - set(ready))}"
    )

    # Every home is back, identical, restored from the repository.
    for user in USERS:
        restored = tree_manifest(svc.homes / user)
        assert restored == originals[user], f"{user}:\n" + diff_trees(originals[user], restored)
    rows = {r["user"]: r for r in json.loads(svc.cli("--json", "status").stdout)}
    for user in USERS:
        assert rows[user]["state"] == "active", rows[user]
        assert rows[user]["restored_at"], rows[user]
    jobs = {}
    for user in USERS:
        code, job = svc.call("GET", f"/api/homes/{user}/restore", svc.user_token(user))
        assert code == 200, job
        assert job["state"] == "done", job
        assert job["result"]["source"] == "bucket", job
        jobs[user] = job
    restore_times = [j["finished"] - j["started"] for j in jobs.values()]
    last_done = max(j["finished"] for j in jobs.values()) - storm_began_epoch
    print(
        f"restores: p50 {statistics.median(restore_times):.1f} s, max "
        f"{max(restore_times):.1f} s; the last one done {last_done:.1f} s into the storm"
    )
