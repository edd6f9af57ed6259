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
``/opt/tljh/state``), ``HOMETIER_INACTIVE_AFTER`` (default 30d), and for shared spaces
(``/srv/data``-style public data and group folders, docs/howto/spaces.md)
``HOMETIER_SPACES`` (their root, a mount point, e.g. ``/srv/spaces``): users then find
them in ``~/shared`` (links written as the user; TLJH's users are ``jupyter-<name>``).

Who administers hometier: TLJH's admins (``users.admin``) and the members of the group
``hometier-admins``, which the plugin creates.
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
    "HOMETIER_SPACES",
    "HOMETIER_SPACES_STORE",
    "HOMETIER_SECRET_STORE",
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


def service_environment(env: dict[str, str], state: Path | None = None) -> dict[str, str]:
    merged = {k: v for k, v in env.items() if k in PASSED and v}
    merged.setdefault(
        "HOMETIER_DB", f"sqlite:///{(STATE if state is None else state) / 'hometier.sqlite'}"
    )
    merged["HOMETIER_HOMES"] = "/home"
    return merged


@hookimpl
def tljh_extra_hub_pip_packages() -> list[str]:
    # Nothing more: `--plugin` installed hometier into the hub's environment already, and
    # asking for "hometier" here would send pip to an index that does not have it.
    return []


CONFIG = """\
# Written by the hometier TLJH plugin at every reload; edit hometier.env instead.
# Read by the service the Hub starts and by `hometier --config THIS-FILE ...` run by hand,
# so both see the same homes, bucket and database.
import os

for _line in open({env_file!r}).read().splitlines() if os.path.isfile({env_file!r}) else []:
    _key, _sep, _value = _line.strip().partition("=")
    if _sep and not _key.startswith("#"):
        os.environ.setdefault(_key.strip(), _value.strip().strip("'\\""))

c.Hometier.homes = "/home"
c.Hometier.home_template = "jupyter-{{username}}"
c.Hometier.db = os.environ.get("HOMETIER_DB") or {db!r}
c.Archiver.inactive_after = os.environ.get("HOMETIER_INACTIVE_AFTER") or "30d"
# The Hub gives these to the service it starts; a command run by hand has none.
c.Archiver.hub_api_url = os.environ.get("JUPYTERHUB_API_URL", "")
c.Archiver.hub_api_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
c.Spaces.user_template = "jupyter-{{username}}"
"""

ADMIN_GROUP = "hometier-admins"
"""Created by the plugin: its members administer hometier without being Hub admins."""


def write_config(state: Path | None = None, env_file: Path | None = None) -> Path:
    """The service's config file: self-contained, so that the commands of the how-to run
    by hand read the same database and bucket as the service."""
    state = STATE if state is None else state
    env_file = ENV_FILE if env_file is None else env_file
    path = state / "hometier_config.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{state / 'hometier.sqlite'}"
    path.write_text(CONFIG.format(env_file=str(env_file), db=db))
    return path


@hookimpl
def tljh_custom_jupyterhub_config(c: Any) -> None:
    # hometier.env is hometier's own: it wins over the hub's environment.
    env = {**os.environ, **read_env_file(ENV_FILE)}
    environment = service_environment(env)
    config_file = write_config()
    # TLJH's admins (`tljh-config add-item users.admin NAME`) administer hometier too, and
    # so does anyone in the hometier-admins group (created here if missing).
    admins = sorted(c.Authenticator.admin_users) if "admin_users" in c.Authenticator else []
    if not (c.Authenticator.get("manage_groups") or c.Authenticator.get("manage_roles")):
        groups = dict(c.JupyterHub.load_groups) if "load_groups" in c.JupyterHub else {}
        groups.setdefault(ADMIN_GROUP, {"users": []})
        c.JupyterHub.load_groups = groups
        admin_groups = [ADMIN_GROUP]
    else:
        admin_groups = []
    configure_hub(
        c,
        service_url=f"http://127.0.0.1:{PORT}/services/hometier",
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
        admin_users=admins,
        admin_groups=admin_groups,
    )
    if environment.get("HOMETIER_SPACES"):
        from hometier.hub.spaces import configure_spaces

        configure_spaces(c, service_url=f"http://127.0.0.1:{PORT}/services/hometier")
