"""Helpers of the jobs end-to-end tests: a real JupyterHub with named servers and
jupyterhub-idle-culler, and a real ``hometier serve`` running the jobs scheduler.

- ``start_jobs_world(root, store=…)``: the Hub (``configure_hub`` as documented,
  ``allow_named_servers``, the culler as a managed service with ``CULL_TIMEOUT``), then
  the service with a config file (``HOMETIER_CONFIG``) that makes the scheduler quick:
  polls every second, reports activity every 2 s, outputs capped at ``MAX_OUTPUT``.
  Single-user servers are the test interpreter's ``jupyterhub.singleuser`` with
  ipykernel, so kernels are real.
- ``notebook(cells, parameters_cell=…)``: an nbformat 4 notebook as bytes.
- ``wait_run(svc, token, job_id, run_id)``: poll the API until the run is finished.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from fixtures.hub import descendants, free_port, start_hub
from fixtures.service import PREFIX, Service

CULL_TIMEOUT = 6
"""Seconds of inactivity after which the culler stops a server (every 2 s it looks)."""
MAX_OUTPUT = 2_000_000
SECRET_KEY = Fernet.generate_key().decode()


def hub_config(service_port: int, token: str) -> str:
    culler = str(Path(sys.executable).parent / "jupyterhub-idle-culler")
    return (
        "import sys\n"
        "from hometier.hub.config import configure_hub\n"
        f"configure_hub(c, service_url='http://127.0.0.1:{service_port}{PREFIX}',"
        f" api_token={token!r}, admin_users=['ops'], spawn_hook=False)\n"
        "for _s in c.JupyterHub.services:\n"
        "    if _s['name'] == 'hometier':\n"
        "        _s['timeout'] = 1\n"
        "c.JupyterHub.allow_named_servers = True\n"
        "c.JupyterHub.named_server_limit_per_user = 3\n"
        "c.JupyterHub.services.append({'name': 'idle-culler', 'command': ["
        f"{culler!r}, '--timeout={CULL_TIMEOUT}', '--cull-every=2', '--remove-named-servers=True']}})\n"
        "c.JupyterHub.load_roles.append({'name': 'idle-culler', 'services': ['idle-culler'],"
        " 'scopes': ['list:users', 'read:users:activity', 'read:servers', 'delete:servers',"
        " 'admin:servers']})\n"
    )


def start_jobs_world(root: Path, *, store: str | None = None) -> Service:
    root.mkdir(parents=True, exist_ok=True)
    (root / "homes").mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(32)
    hub = start_hub(root / "homes", extra_config=hub_config(port, token))
    try:
        time.sleep(1)  # let the culler start, so that close() knows its PID too
        if hub.pid is not None:
            hub._seen.update(descendants(hub.pid))
        config = root / "hometier_config.py"
        config.write_text(
            f"c.Jobs.proxy_url = {hub.url!r}\n"
            "c.Jobs.poll_interval = '1s'\n"
            "c.Jobs.heartbeat = '1s'\n"
            "c.Jobs.activity_interval = '2s'\n"
            "c.Jobs.stale_after = '20s'\n"
            "c.Jobs.spawn_timeout = '90s'\n"
            f"c.Jobs.max_output_size = '{MAX_OUTPUT}'\n"
            f"c.Hometier.secret_key = {SECRET_KEY!r}\n"
        )
        env = dict(
            os.environ,
            HOMETIER_CONFIG=str(config),
            JUPYTERHUB_API_TOKEN=token,
            JUPYTERHUB_API_URL=f"http://127.0.0.1:{hub.ports['hub']}/hub/api",
            JUPYTERHUB_CLIENT_ID="service-hometier",
            JUPYTERHUB_SERVICE_NAME="hometier",
            JUPYTERHUB_SERVICE_PREFIX=f"{PREFIX}/",
            JUPYTERHUB_BASE_URL="/",
            JUPYTERHUB_OAUTH_CALLBACK_URL=f"{PREFIX}/oauth_callback",
            HOMETIER_HOMES=str(root / "homes"),
            HOMETIER_STORE=store or f"file://{root / 'repo'}",
            HOMETIER_DB=f"sqlite:///{root / 'state.db'}",
        )
        env.pop("HOMETIER_SECRET_KEY", None)
        svc = Service(hub, root, port, token, env)
        svc.start()
        return svc
    except BaseException:
        hub.close()
        raise


def notebook(*cells: str, parameters: str | None = None) -> bytes:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in cells)
    return nbformat.writes(nb).encode()


def wait_run(
    svc: Service, token: str, job_id: int, run_id: int, timeout: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = svc.call("GET", f"/api/jobs/{job_id}/runs/{run_id}", token)
        assert status == 200, doc
        if doc["state"] not in ("queued", "running"):
            return dict(doc)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} still {doc['state']} after {timeout:.0f} s:\n"
                + (svc.root / "service.log").read_text()[-3000:]
            )
        time.sleep(0.5)


def make_job(svc: Service, token: str, **doc: Any) -> dict[str, Any]:
    doc.setdefault("schedule", "0 3 * * *")
    status, out = svc.call("POST", "/api/jobs", token, doc)
    assert status == 201, out
    return dict(out)


def run_now(svc: Service, token: str, job_id: int) -> dict[str, Any]:
    status, out = svc.call("POST", f"/api/jobs/{job_id}/run", token, {})
    assert status == 202, out
    return dict(out)


def outputs_text(nb_bytes: bytes) -> str:
    doc = json.loads(nb_bytes)
    parts = []
    for cell in doc["cells"]:
        for o in cell.get("outputs", []):
            parts.append(json.dumps(o))
    return "\n".join(parts)
