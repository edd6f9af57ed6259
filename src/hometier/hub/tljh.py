"""The Littlest JupyterHub plugin: ``tljh-config``-free setup of hometier on one host.

Install with ``sudo -E python3 bootstrap.py --plugin hometier`` (or
``sudo /opt/tljh/hub/bin/python3 -m pip install hometier[tljh]`` then
``sudo tljh-config reload``). The plugin makes the Hub start and supervise the hometier
service (a managed JupyterHub service: the Hub generates its token) and restores every
user's home before their server starts. TLJH's homes are ``/home/jupyter-<name>``,
owned by the system user of the same name: hometier keeps numeric owners, so restored
files keep their uid/gid.

Settings come from the environment of the hub (``/etc/systemd/system/jupyterhub.service``
drop-in) or ``/opt/tljh/state/hometier.env``: ``HOMETIER_STORE`` (required, e.g.
``s3://bucket/hometier`` with ``AWS_*``), ``HOMETIER_DB`` (default SQLite under
``/opt/tljh/state``), ``HOMETIER_INACTIVE_AFTER`` (default 30d).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pluggy

from hometier.hub.config import configure_hub

hookimpl = pluggy.HookimplMarker("tljh")

PORT = 8765
STATE = Path("/opt/tljh/state")
ENV_FILE = STATE / "hometier.env"
PASSED = (
    "HOMETIER_STORE",
    "HOMETIER_DB",
    "HOMETIER_INACTIVE_AFTER",
    "HOMETIER_SECRET_KEY",  # seals bucket folders' credentials
    "HOMETIER_MOUNTS_ROOT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, optional quotes); missing file: nothing."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().strip("'\"")
    return out


def service_environment(env: dict[str, str], state: Path = STATE) -> dict[str, str]:
    merged = {k: v for k, v in env.items() if k in PASSED and v}
    merged.setdefault("HOMETIER_DB", f"sqlite:///{state / 'hometier.sqlite'}")
    merged["HOMETIER_HOMES"] = "/home"
    return merged


@hookimpl
def tljh_extra_hub_pip_packages() -> list[str]:
    return ["hometier[tljh]"]


@hookimpl
def tljh_custom_jupyterhub_config(c: Any) -> None:
    # hometier.env is hometier's own: it wins over the hub's environment.
    env = {**os.environ, **read_env_file(ENV_FILE)}
    environment = service_environment(env)
    config_file = STATE / "hometier_config.py"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    inactive = env.get("HOMETIER_INACTIVE_AFTER", "30d")
    config_file.write_text(
        "# Written by the hometier TLJH plugin at every reload; edit hometier.env instead.\n"
        'c.Hometier.home_template = "jupyter-{username}"\n'
        f"c.Archiver.inactive_after = {inactive!r}\n"
        'c.Archiver.hub_api_url = __import__("os").environ["JUPYTERHUB_API_URL"]\n'
        'c.Archiver.hub_api_token = __import__("os").environ["JUPYTERHUB_API_TOKEN"]\n'
    )
    configure_hub(
        c,
        service_url=f"http://127.0.0.1:{PORT}/services/hometier",
        api_token="",
        command=[
            sys.executable,
            "-m",
            "hometier.cli.main",
            "--config",
            str(config_file),
            "serve",
            "--ip",
            "127.0.0.1",
            "--port",
            str(PORT),
        ],
        environment=environment,
        admin_groups=["admin"],
    )
