"""A login storm: N users log in at once (a class starting) and every home must come back.

    python bench/storm_bench.py                 # 500 logins
    python bench/storm_bench.py --smoke         # 10 logins (what CI runs)
    python bench/storm_bench.py --logins 200 --restore-concurrency 16

Real parts, all on 127.0.0.1 and stopped by PID: SeaweedFS (S3) and PostgreSQL started
by ``tests/fixtures/servers.py``, ``hometier serve`` (PostgreSQL state, the bucket) and a
real JupyterHub with configurable-http-proxy whose config calls ``configure_hub`` (the
restore-before-spawn hook and its restore tickets). Every user has a small home (a few
dozen files, ~200 KB), archived beforehand with its quarantine purged, so each login
restores from the bucket.

The single-user servers are a stub: one tiny HTTP server that answers every user's URL
(``StubSpawner``), because 500 real Jupyter servers cannot start on a small machine and
are not what is measured. ``c.JupyterHub.concurrent_spawn_limit = 0``: the Hub's own
limit (100 by default) would turn most of a 500-login storm into "try again" pages
before hometier sees it.

For each login it measures, from the moment the spawn was requested through the Hub's
API: **accepted** (the service accepted the restore: the job's ``started``) and
**restored** (the job's ``finished``), and reports p50/p95/max with the load average.
The targets: every request accepted within 5 s, p95 restore of a
small home within 10 s. ``run_storm(...)`` returns the figures as a dict for other
harnesses (``bench/scale_bench.py``).

The homes volume: as root, a fresh ext4 image loop-mounted for the run (``--volume
ext4``, the default when root), as a hub's homes volume is a filesystem of its own;
``--volume dir`` puts the homes in a folder of the work directory's filesystem instead.
Creating a file costs that filesystem's kernel time, which the service pays 41 times
per restore: the report gives it (``create_us``, measured on the volume before the
storm), because on an aged root filesystem it can be most of the storm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for extra in (str(REPO / "src"), str(REPO / "tests"), str(HERE)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

PREFIX = "/services/hometier"

STUB_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"version": "2.0.0"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

HUB_CONFIG = """
from jupyterhub.spawner import Spawner
from hometier.hub.config import configure_hub

configure_hub(c, service_url={service_url!r}, api_token={token!r}, admin_users=["ops"])


class StubSpawner(Spawner):
    # A server that is already up: one HTTP server answers every user (the storm measures
    # hometier, not 500 Jupyter servers starting).
    _up = False

    async def start(self):
        self._up = True
        return ("127.0.0.1", {stub_port})

    async def poll(self):
        return None if self._up else 0

    async def stop(self, now=False):
        self._up = False


c.JupyterHub.spawner_class = StubSpawner
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.Spawner.start_timeout = {timeout}
c.Spawner.http_timeout = {timeout}
c.JupyterHub.log_level = "INFO"
"""


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def make_home(path: Path, seed: int, files: int = 40, size: int = 5000) -> tuple[int, int]:
    import random

    rng = random.Random(seed)
    total = 0
    for i in range(files):
        d = path / f"project-{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(size // 2, size * 2))
        (d / f"file-{i:03d}.dat").write_bytes(data)
        total += len(data)
    (path / "notes.md").write_text(f"notes of {path.name}\n")
    return files + 1, total


def _tree(path: Path) -> dict[str, int]:
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _call(url: str, token: str, timeout: float = 30) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:300]


def _archive_all(env: dict[str, str], users: list[str]) -> float:
    """Archive every home (the CLI's library, 4 at a time) and purge the quarantine."""
    from hometier.app import make_lifecycle
    from hometier.config import Archiver, Hometier
    from hometier.lifecycle.cycle import archive_home, purge_quarantine

    cfg = Hometier(homes=env["HOMETIER_HOMES"], store=env["HOMETIER_STORE"], db=env["HOMETIER_DB"])
    began = time.monotonic()
    lc = make_lifecycle(cfg, Archiver(quarantine_for="0", hub_api_url="", use_hub=False))
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda u: archive_home(lc, u), users))
        bad = [(r.user, r.outcome, r.reason) for r in results if r.outcome != "archived"]
        if bad:
            raise RuntimeError(f"archives failed: {bad[:5]}")
        purge_quarantine(lc)
    finally:
        lc.db.dispose()
    return time.monotonic() - began


def _direct_storm(
    service_url: str, token: str, users: list[str], timeout: float
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Every user's restore requested at once straight from here, as the hook sends it
    (a ticket, then the event stream): (accepted after, restored after, failed)."""
    import http.client
    from urllib.parse import urlsplit

    from hometier.tickets import mint_ticket

    base = urlsplit(service_url)
    accepted: dict[str, float] = {}
    restored: dict[str, float] = {}
    failed: list[str] = []
    why: dict[str, str] = {}
    gate = threading.Barrier(len(users))

    def one(user: str) -> None:
        ticket = mint_ticket(token, user, 900)
        headers = {"Authorization": f"token {ticket}", "Content-Type": "application/json"}
        path = f"{base.path}/api/homes/{user}/restore"
        gate.wait()
        began = time.monotonic()
        try:
            conn = http.client.HTTPConnection(base.hostname, base.port, timeout=timeout)
            conn.request("POST", path, body=b"{}", headers=headers)
            resp = conn.getresponse()
            resp.read()
            accepted[user] = time.monotonic() - began
            conn.request("GET", f"{path}/events", headers=headers)
            resp = conn.getresponse()
            state, last = "", ""
            for raw in resp:
                line = raw.decode()
                if line.startswith("data:"):
                    last = line[5:].strip()[:300]
                    state = json.loads(line[5:]).get("state", "")
                    if state in ("done", "failed"):
                        break
            conn.close()
            if state == "done":
                restored[user] = time.monotonic() - began
            else:
                failed.append(user)
                why[user] = f"ended in state {state!r}: {last}"
        except OSError as exc:
            failed.append(user)
            why[user] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if why:
        print("failures (first 5):", *list(why.items())[:5], sep="\n  ", flush=True)
    return accepted, restored, failed


def _cpu_seconds(pid: int, tree: bool = False, system: bool = False) -> float:
    """User + system CPU of process ``pid`` and of its children it has waited for; with
    ``tree``, of its live descendants too (PostgreSQL's backends); with ``system``, the
    kernel's part alone."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc") if tree else [str(pid)]:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stats[int(entry)] = f.read().rpartition(")")[2].split()
        except OSError:
            continue
    wanted, grew = {pid}, True
    while tree and grew:
        more = {p for p, f in stats.items() if int(f[1]) in wanted} - wanted
        wanted |= more
        grew = bool(more)
    fields = (12, 14) if system else (11, 12, 13, 14)
    ticks = sum(int(stats[p][i]) for p in wanted if p in stats for i in fields)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_storm(
    logins: int = 500,
    *,
    files: int = 40,
    file_size: int = 5000,
    restore_concurrency: int = 8,
    adaptive: bool = True,
    timeout: float = 600.0,
    workdir: str | None = None,
    verbose: bool = True,
    direct: bool = False,
    volume: str = "auto",
    hub_db: str = "sqlite",
) -> dict[str, Any]:
    """Run one storm of ``logins`` logins; returns the figures (see the module doc).

    ``direct``: the same restores requested straight from here, as the hook requests
    them (a ticket, then the event stream), without a Hub: what the service alone adds
    (the Hub's own spawn handling is then out of the figures). ``hub_db``: the Hub's own
    database, ``sqlite`` (a file, as the test Hubs use) or ``postgresql`` (a database of
    its own on the benchmark's PostgreSQL server, as a large hub runs it)."""
    from fixtures.hub import start_hub
    from fixtures.servers import free_port, start_pg_server, start_s3_server
    from fixtures.service import Service

    def say(*a: Any) -> None:
        if verbose:
            print(*a, flush=True)

    from benchlib import create_cost
    from semester_volume import Volume, loop_available

    root = Path(workdir or tempfile.mkdtemp(prefix="hometier-storm-"))
    homes = root / "homes"
    homes.mkdir(parents=True, exist_ok=True)
    auto = volume == "auto"
    if auto:
        volume = "ext4" if loop_available() else "dir"
    users = [f"s{i:04d}" for i in range(logins)]
    figures: dict[str, Any] = {"logins": logins, "load_before": loadavg(), "volume": volume}
    s3 = start_s3_server()
    # The archive below runs in this process and reads AWS_* from its environment; the
    # caller's values (a test session's own S3 server) come back when the storm ends.
    saved_env = {k: os.environ.get(k) for k in s3.env()}
    pg = start_pg_server()
    svc: Service | None = None
    stub: subprocess.Popen[bytes] | None = None
    hub = None
    vol = None
    try:
        if volume == "ext4":
            try:
                vol = Volume.create(homes, root / "homes.img", size="8G")
            except RuntimeError as exc:  # no loop devices here (a container without them)
                if not auto:
                    raise
                say(f"no ext4 volume ({exc}); the homes go in a folder")
                volume = figures["volume"] = "dir"
        figures["create_us"] = create_cost(homes)
        say(f"homes volume: {volume}; creating a file there costs {figures['create_us']} us")
        pg.create_database("storm")
        env = dict(os.environ, **s3.env())
        env.update(
            HOMETIER_HOMES=str(homes),
            HOMETIER_STORE=s3.url(f"storm-{secrets.token_hex(4)}"),
            HOMETIER_DB=pg.url("storm"),
        )
        os.environ.update(s3.env())  # for the archive below, in this process
        files_total = bytes_total = 0
        for i, user in enumerate(users):
            n, b = make_home(homes / user, seed=i, files=files, size=file_size)
            files_total, bytes_total = files_total + n, bytes_total + b
        originals = {u: _tree(homes / u) for u in users}
        figures["home_bytes_mean"] = bytes_total // logins
        figures["home_files_mean"] = files_total // logins
        say(f"{logins} homes, {bytes_total / 1e6:.1f} MB; archiving (load {loadavg()})")
        figures["archive_seconds"] = round(_archive_all(env, users), 1)
        say(f"archived in {figures['archive_seconds']} s (load {loadavg()})")

        port, hub_port, stub_port = free_port(), free_port(), free_port()
        token = secrets.token_hex(32)
        stub = subprocess.Popen([sys.executable, "-c", STUB_SERVER, str(stub_port)])
        env.update(
            JUPYTERHUB_API_TOKEN=token,
            JUPYTERHUB_API_URL=f"http://127.0.0.1:{hub_port}/hub/api",
            JUPYTERHUB_CLIENT_ID="service-hometier",
            JUPYTERHUB_SERVICE_NAME="hometier",
            JUPYTERHUB_SERVICE_PREFIX=f"{PREFIX}/",
        )
        (root / "hometier_config.py").write_text(
            f"c.Service.restore_concurrency = {restore_concurrency}\n"
            f"c.Service.adaptive_restores = {adaptive}\n"
        )
        # The service reads ./hometier_config.py of its own working folder, which is not
        # ``root``: name the file, or the settings above are never read.
        env["HOMETIER_CONFIG"] = str(root / "hometier_config.py")
        env["PYTHONPATH"] = str(REPO / "src")
        svc = Service(None, root, port, token, env)  # type: ignore[arg-type]
        svc.start()
        service_url = f"http://127.0.0.1:{port}{PREFIX}"
        config = textwrap.dedent(
            HUB_CONFIG.format(
                service_url=service_url, token=token, stub_port=stub_port, timeout=int(timeout)
            )
        )
        config += f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'\n"
        if direct:
            say(f"service up; {logins} restores requested at once (load {loadavg()})")
            began = time.monotonic()
            pids = {"service": svc.proc.pid if svc.proc else 0, "postgresql": pg.pid or 0}
            pids["s3"] = s3.pid or 0
            cpu = {k: _cpu_seconds(p, tree=k == "postgresql") for k, p in pids.items()}
            service_sys = _cpu_seconds(pids["service"], system=True)
            acc, res, failed_direct = _direct_storm(service_url, token, users, timeout)
            figures["storm_seconds"] = round(time.monotonic() - began, 1)
            # CPU time is steadier than wall time on a shared machine, and says what one
            # restore costs the machine: the service's own (and its finished writer
            # processes'), PostgreSQL's and the S3 server's.
            for k, p in pids.items():
                figures[f"{k}_cpu_seconds"] = round(
                    _cpu_seconds(p, tree=k == "postgresql") - cpu[k], 1
                )
            figures["service_system_cpu_seconds"] = round(
                _cpu_seconds(pids["service"], system=True) - service_sys, 1
            )
            figures["load_after"] = figures["load_during"] = loadavg()
            wrong = [
                u for u in users if u not in failed_direct and _tree(homes / u) != originals[u]
            ]
            acc_v, res_v = list(acc.values()), list(res.values())
            figures.update(
                mode="direct",
                ready=len(res_v),
                refused=0,
                refused_codes=[],
                failed=len(failed_direct),
                wrong_content=len(wrong),
                requests_seconds=round(max(acc_v, default=0.0), 2),
                accepted_p50=round(percentile(acc_v, 50), 2),
                accepted_p95=round(percentile(acc_v, 95), 2),
                accepted_max=round(max(acc_v, default=float("nan")), 2),
                restored_p50=round(percentile(res_v, 50), 2),
                restored_p95=round(percentile(res_v, 95), 2),
                restored_max=round(max(res_v, default=float("nan")), 2),
                restore_concurrency=restore_concurrency,
                adaptive_restores=adaptive,
            )
            figures["targets_met"] = bool(
                acc_v
                and not failed_direct
                and not wrong
                and max(acc_v) <= 5.0
                and percentile(res_v, 95) <= 10.0
            )
            return figures
        if hub_db == "postgresql":
            pg.create_database("hub")
            config += f"\nc.JupyterHub.db_url = {pg.url('hub')!r}\n"
        figures["hub_db"] = hub_db
        hub = start_hub(homes, extra_config=config, env={"PYTHONPATH": str(REPO / "src")})
        svc.hub = hub
        for i in range(0, len(users), 100):  # a loaded Hub takes its time creating users
            hub.request(
                "POST",
                "/users",
                {"usernames": users[i : i + 100]},
                timeout=300,
                expect=(201, 409),
            )
        # "ops" exists already: configure_hub made it the admin.
        ops = svc.user_token("ops")
        say(f"hub and service up; storm of {logins} logins (load {loadavg()})")

        requested: dict[str, float] = {}
        answers: dict[str, int] = {}
        gate = threading.Barrier(min(logins, 64))

        def spawn(user: str) -> None:
            if logins <= 64:
                gate.wait()
            requested[user] = time.time()
            answers[user] = hub.request(
                "POST",
                f"/users/{user}/server",
                expect=(201, 202, 400, 429, 500, 503),
                timeout=timeout,
            )[0]

        began = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(spawn, users))
        figures["requests_seconds"] = round(time.monotonic() - began, 2)
        figures["load_during"] = loadavg()
        refused = {u: c for u, c in answers.items() if c not in (201, 202)}

        # Until every server is ready or gone (one admin call lists them all).
        ready: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = {
                u["name"]
                for u in hub.users()
                if u.get("servers", {}).get("", {}).get("ready") and u["name"] in requested
            }
            pending = [
                u["name"]
                for u in hub.users()
                if u.get("servers", {}).get("") and u["name"] not in ready
            ]
            if len(ready) + len(refused) >= logins or (
                not pending and time.monotonic() - began > 10
            ):
                break
            time.sleep(1)
        figures["storm_seconds"] = round(time.monotonic() - began, 1)
        figures["load_after"] = loadavg()

        accepted: list[float] = []
        restored: list[float] = []
        failed: list[str] = []
        for user in users:
            code, job = _call(f"{service_url}/api/homes/{user}/restore", ops)
            if code != 200 or not isinstance(job, dict) or job.get("state") != "done":
                failed.append(user)
                continue
            accepted.append(job["started"] - requested[user])
            restored.append(job["finished"] - requested[user])
        wrong = [u for u in users if u not in failed and _tree(homes / u) != originals[u]]
        figures.update(
            mode="hub",
            ready=len(ready),
            refused=len(refused),
            refused_codes=sorted(set(refused.values())),
            failed=len(failed),
            wrong_content=len(wrong),
            accepted_p50=round(percentile(accepted, 50), 2),
            accepted_p95=round(percentile(accepted, 95), 2),
            accepted_max=round(max(accepted, default=float("nan")), 2),
            restored_p50=round(percentile(restored, 50), 2),
            restored_p95=round(percentile(restored, 95), 2),
            restored_max=round(max(restored, default=float("nan")), 2),
            restore_concurrency=restore_concurrency,
            adaptive_restores=adaptive,
            targets_met=bool(
                accepted
                and not failed
                and not wrong
                and not refused
                and max(accepted) <= 5.0
                and percentile(restored, 95) <= 10.0
            ),
        )
        return figures
    finally:
        if hub is not None:
            hub.close()
        if svc is not None:
            svc.stop()
        if stub is not None:
            stub.send_signal(signal.SIGTERM)
            stub.wait(10)
        pg.close()
        s3.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if vol is not None:
            vol.unmount()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logins", type=int, default=500, help="users logging in at once")
    p.add_argument("--smoke", action="store_true", help="10 logins (CI)")
    p.add_argument(
        "--restore-concurrency", type=int, default=8, help="c.Service.restore_concurrency"
    )
    p.add_argument(
        "--fixed-pool",
        action="store_true",
        help="c.Service.adaptive_restores = False: every pool thread restores at once",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, database)")
    p.add_argument(
        "--direct",
        action="store_true",
        help="request the restores straight from here, as the hook does, without a Hub",
    )
    p.add_argument(
        "--volume",
        choices=("auto", "ext4", "dir"),
        default="auto",
        help="the homes on a fresh loop-mounted ext4 image (root) or in a folder [auto: ext4 as root]",
    )
    p.add_argument(
        "--hub-db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the Hub's own database: a SQLite file, or PostgreSQL as a large hub runs it",
    )
    args = p.parse_args()
    logins = 10 if args.smoke else args.logins
    figures = run_storm(
        logins,
        restore_concurrency=args.restore_concurrency,
        adaptive=not args.fixed_pool,
        direct=args.direct,
        workdir=args.keep,
        volume=args.volume,
        hub_db=args.hub_db,
    )
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"\n{figures['logins']} logins ({figures['mode']}): accepted p50 {figures['accepted_p50']} s, "
            f"p95 {figures['accepted_p95']} s, max {figures['accepted_max']} s; "
            f"restored p50 {figures['restored_p50']} s, p95 {figures['restored_p95']} s, "
            f"max {figures['restored_max']} s; {figures['failed']} failed, "
            f"{figures['refused']} refused, {figures['wrong_content']} wrong; "
            f"storm {figures['storm_seconds']} s; homes on {figures['volume']} "
            f"({figures['create_us']} us a file created); the Hub's database: "
            f"{figures.get('hub_db', 'sqlite')}"
            + (
                f" (CPU: service {figures['service_cpu_seconds']} s"
                f" of which kernel {figures['service_system_cpu_seconds']} s, PostgreSQL "
                f"{figures['postgresql_cpu_seconds']} s, S3 {figures['s3_cpu_seconds']} s)"
                if "service_cpu_seconds" in figures
                else ""
            )
            + f"; load before {figures['load_before']}, "
            f"during {figures['load_during']}, after {figures['load_after']}; "
            f"targets met: {figures['targets_met']}"
        )
    ok = figures["failed"] == 0 and figures["wrong_content"] == 0 and figures["refused"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
