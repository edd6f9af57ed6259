"""``configure_hub(c, ...)``: register hometier with JupyterHub in one call.

In ``jupyterhub_config.py``::

    from hometier.hub.config import configure_hub
    configure_hub(c, service_url="http://127.0.0.1:8765", api_token=os.environ["HOMETIER_HUB_TOKEN"],
                  admin_users=["ops"])

It registers the ``hometier`` service, its custom scopes, a least-privilege role for
the service (read activity and servers), grants every user what they need for their own
home (access to the service, restore/read/lease on themselves), an admin role, and the
restore-before-spawn hook (chained with any hook already configured).
"""

from __future__ import annotations

from typing import Any

from hometier.hub.spawn_hook import make_pre_spawn_hook
from hometier.scopes import CUSTOM_SCOPES

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


def _get(section: Any, name: str, empty: Any) -> Any:
    """A value already set in the config, or ``empty`` (unset traits are lazy objects)."""
    return section[name] if name in section else empty


def _replace(items: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("name") != new["name"]] + [new]


def configure_hub(
    c: Any,
    *,
    service_url: str,
    api_token: str,
    admin_users: list[str] | None = None,
    admin_groups: list[str] | None = None,
    spawn_hook: bool = True,
    timeout: float = 600.0,
    command: list[str] | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Register hometier with this Hub; see the module docstring.

    With ``command`` the Hub starts and supervises the service itself (a managed
    service, as on The Littlest JupyterHub) and generates its token; ``api_token`` may
    then be empty. ``service_url`` is where the API answers directly, with the
    service's prefix (``http://127.0.0.1:8765/services/hometier``): the spawn hook calls
    it without going through the proxy.
    """
    jh = c.JupyterHub
    service: dict[str, Any] = {
        "name": "hometier",
        # The Hub routes /services/hometier/ to this base URL, path and all.
        "url": service_url.split("/services/")[0],
        "oauth_no_confirm": True,
        "display": True,
        # What a browser session with the service may carry (the Hub gives each user only
        # the scopes they hold): without these an admin is no admin on the dashboard.
        "oauth_client_allowed_scopes": [
            "custom:hometier:admin",
            "custom:hometier:read!user",
            "custom:hometier:restore!user",
            "custom:hometier:lease!user",
            "custom:hometier:jobs!user",
        ],
    }
    if api_token:
        service["api_token"] = api_token
    if command:
        service["command"] = command
        service["environment"] = dict(environment or {})
    jh.services = _replace(list(_get(jh, "services", [])), service)
    scopes = dict(_get(jh, "custom_scopes", {}))
    scopes.update(CUSTOM_SCOPES)
    jh.custom_scopes = scopes
    roles = list(_get(jh, "load_roles", []))
    roles = _replace(
        roles,
        {
            "name": "hometier-service",
            "scopes": SERVICE_SCOPES,
            "services": ["hometier"],
        },
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
        c.Spawner.pre_spawn_hook = make_pre_spawn_hook(service_url, timeout=timeout, chain=existing)
