"""``configure_hub(c, ...)``: register hometier with JupyterHub in one call.

In ``jupyterhub_config.py`` of a Hub with local spawners (``docs/howto/local-spawners.md``)::

    from hometier.hub.config import configure_hub
    configure_hub(c, homes="/home", admin_users=["ops"])

By default the Hub runs the service itself (a *managed* JupyterHub service): it starts
``hometier serve`` beside it, restarts it if it dies, and hands it everything a service
needs from its Hub — ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_CLIENT_ID``, ``JUPYTERHUB_SERVICE_PREFIX``, the OAuth callback — so there is
nothing to copy by hand. ``homes``, ``store`` and ``db`` (or the ``HOMETIER_*`` variables
of the Hub's own environment) and the object-store credentials of the Hub's environment
(``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) are passed on to it.

With ``service_url`` (and ``api_token``) instead, the service is one the operator runs
(another host, a systemd unit of its own): the Hub only registers it.

Either way it also registers hometier's custom scopes, a least-privilege role for the
service (read activity and servers), what every user needs for their own home (access to
the service, restore/read/lease on themselves), an admin role, and the
restore-before-spawn hook (chained with any hook already configured), which shows the
restore's progress on the spawn page.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

from hometier.hub.spawn_hook import DEFAULT_TIMEOUT, make_pre_spawn_hook
from hometier.scopes import CUSTOM_SCOPES

SERVICE_NAME = "hometier"
DEFAULT_PORT = 8765
# Shared spaces follow JupyterHub's groups: list them and read their members. Jobs run
# as their owner: the service mints each run a token of that user, limited to one server
# and expiring with the run (and revokes it after), hence `tokens`.
SERVICE_SCOPES = [
    "list:users",
    "read:users:activity",
    "read:servers",
    "list:groups",
    "read:groups",
    "tokens",
]
USER_SCOPES = [
    "self",
    "access:services!service=hometier",
    "custom:hometier:restore!user",
    "custom:hometier:read!user",
    "custom:hometier:lease!user",
    "custom:hometier:jobs!user",
]
ALLOWED_SCOPES = [
    "custom:hometier:admin",
    "custom:hometier:read!user",
    "custom:hometier:restore!user",
    "custom:hometier:lease!user",
    "custom:hometier:jobs!user",
]
"""What a browser session with the service may carry (the Hub gives each user only the
scopes they hold): without these an admin is no admin on the dashboard."""
PASSED_PREFIXES = ("HOMETIER_", "AWS_", "GOOGLE_", "AZURE_")
"""Variables of the Hub's environment a managed service receives (JupyterHub passes a
managed service only a few of its own, PATH and the like)."""


def _get(section: Any, name: str, empty: Any) -> Any:
    """A value already set in the config, or ``empty`` (unset traits are lazy objects)."""
    return section[name] if name in section else empty


def _replace(items: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("name") != new["name"]] + [new]


def service_environment(
    env: dict[str, str] | None = None, **settings: str | None
) -> dict[str, str]:
    """What a managed service gets besides the Hub's ``JUPYTERHUB_*``: the ``HOMETIER_*``
    and cloud credential variables of ``env`` (the Hub's environment), then ``settings``
    (``homes="/home"`` → ``HOMETIER_HOMES``)."""
    source = os.environ if env is None else env
    out = {k: v for k, v in source.items() if k.startswith(PASSED_PREFIXES) and v}
    for key, value in settings.items():
        if value:
            out[f"HOMETIER_{key.upper()}"] = value
    return out


def managed_command(port: int, config_file: str | None = None) -> list[str]:
    """``hometier serve`` with the Hub's own Python (hometier is installed beside it)."""
    cmd = [sys.executable, "-m", "hometier.cli.main"]
    if config_file:
        cmd += ["--config", config_file]
    return [*cmd, "serve", "--ip", "127.0.0.1", "--port", str(port)]


def _service_url_of(spawner: Any, port: int) -> str:
    """The managed service's direct URL with the prefix the Hub gave it (which follows
    the Hub's ``base_url``, known for certain only once the Hub runs)."""
    hub_base = str(getattr(getattr(spawner, "hub", None), "base_url", "/hub/") or "/hub/")
    root = hub_base[: -len("hub/")] if hub_base.endswith("hub/") else "/"
    return f"http://127.0.0.1:{port}{root}services/{SERVICE_NAME}"


def configure_hub(
    c: Any,
    *,
    service_url: str | None = None,
    api_token: str | None = None,
    homes: str | None = None,
    store: str | None = None,
    db: str | None = None,
    port: int = DEFAULT_PORT,
    config_file: str | None = None,
    admin_users: list[str] | None = None,
    admin_groups: list[str] | None = None,
    spawn_hook: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    token_ttl: int = 900,
    command: list[str] | None = None,
    environment: dict[str, str] | None = None,
) -> str:
    """Register hometier with this Hub; see the module docstring. Returns the service's
    API token (generated for a managed service unless ``api_token`` is given).

    - Managed (no ``service_url``, or a ``command``): the Hub starts ``command``
      (default: ``hometier serve`` on 127.0.0.1:``port``, with ``--config config_file``)
      with ``environment`` plus the variables ``service_environment`` picks.
    - External (``service_url``, no ``command``): ``service_url`` is where the API
      answers directly, with its prefix (``http://127.0.0.1:8765/services/hometier``);
      ``api_token`` is the service's ``HOMETIER_HUB_TOKEN``.

    The spawn hook authorizes each restore with a ticket signed with the service's token
    (``hometier.tickets``); ``token_ttl`` is how long one lives.
    """
    jh = c.JupyterHub
    managed = command is not None or service_url is None
    # A managed service's token: HOMETIER_HUB_TOKEN from the Hub's environment when the
    # operator set one (so that `hometier` run by hand with the same settings can ask the
    # Hub who is active), else a fresh one.
    token = api_token or (
        (os.environ.get("HOMETIER_HUB_TOKEN") or secrets.token_hex(32)) if managed else ""
    )
    service: dict[str, Any] = {
        "name": SERVICE_NAME,
        "oauth_no_confirm": True,
        "display": True,
        "oauth_client_allowed_scopes": list(ALLOWED_SCOPES),
    }
    if token:
        service["api_token"] = token
    if managed:
        env = service_environment(homes=homes, store=store, db=db)
        env.update(environment or {})
        service["command"] = command or managed_command(port, config_file)
        service["environment"] = env
        base = service_url.split("/services/")[0] if service_url else f"http://127.0.0.1:{port}"
        service["url"] = base
    else:
        assert service_url is not None
        # The Hub routes /services/hometier/ to this base URL, path and all.
        service["url"] = service_url.split("/services/")[0]
    jh.services = _replace(list(_get(jh, "services", [])), service)
    scopes = dict(_get(jh, "custom_scopes", {}))
    scopes.update(CUSTOM_SCOPES)
    jh.custom_scopes = scopes
    roles = list(_get(jh, "load_roles", []))
    roles = _replace(
        roles, {"name": "hometier-service", "scopes": SERVICE_SCOPES, "services": [SERVICE_NAME]}
    )
    user_role = next((r for r in roles if r.get("name") == "user"), {"name": "user", "scopes": []})
    merged = list(dict.fromkeys([*user_role.get("scopes", []), *USER_SCOPES]))
    roles = _replace(roles, {**user_role, "scopes": merged})
    if admin_users or admin_groups:
        roles = _replace(
            roles,
            {
                "name": "hometier-admin",
                "scopes": ["custom:hometier:admin", "access:services!service=hometier"],
                "users": list(admin_users or []),
                "groups": list(admin_groups or []),
            },
        )
    jh.load_roles = roles
    if spawn_hook:
        existing = c.Spawner.pre_spawn_hook if "pre_spawn_hook" in c.Spawner else None
        if managed and service_url is None:

            def url_of(spawner: Any) -> str:
                return _service_url_of(spawner, port)

            target: Any = url_of
        else:
            target = service_url
        c.Spawner.pre_spawn_hook = make_pre_spawn_hook(
            target, timeout=timeout, chain=existing, secret=token or None, token_ttl=token_ttl
        )
    return token
