"""Bucket folders in JupyterHub: attach them when a server spawns, release them when it
stops. The hooks run in the Hub and talk to the hometier service over HTTP only, with a
short-lived token of the user's whose one scope is ``custom:hometier:attach!user=NAME``.

In ``jupyterhub_config.py``, after ``configure_hub(c, ...)``::

    from hometier.hub.mounts import configure_mounts
    configure_mounts(c, service_url="http://127.0.0.1:8765/services/hometier")

``kind="local"`` (LocalProcessSpawner, SystemdSpawner, TLJH): the service binds each
folder inside the user's home, at its mount path; the server needs nothing else.
``kind="docker"`` (DockerSpawner on the same host): the service binds each folder below
its mounts root and the hook adds a volume per folder to ``spawner.volumes``, with
``rslave`` propagation so that a recovered mount reaches the running container.

A folder that cannot be attached does not stop the spawn: the server starts without it,
the reason is logged and shown on the spawn page, and the dashboard tells the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hometier.scopes import ATTACH, MOUNT_SCOPES

log = logging.getLogger(__name__)
Hook = Callable[[Any], Awaitable[None]]
KINDS = ("local", "docker")
TOKEN_NOTE = "hometier: bucket folders of a server"


def attach_scope(username: str) -> str:
    return f"{ATTACH}!user={username}"


def mint_attach_token(spawner: Any, expires_in: int = 300) -> str:
    token: str = spawner.user.new_api_token(
        note=TOKEN_NOTE, expires_in=expires_in, scopes=[attach_scope(spawner.user.name)]
    )
    return token


async def _call(method: str, url: str, token: str, body: Any = None, timeout: float = 120.0) -> Any:
    req = HTTPRequest(
        url,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=json.dumps(body).encode() if body is not None else None,
        request_timeout=timeout,
    )
    resp = await AsyncHTTPClient().fetch(req)
    return json.loads(resp.body or b"{}")


def _error(exc: BaseException) -> str:
    if isinstance(exc, HTTPClientError) and exc.response is not None:
        try:
            return str(json.loads(exc.response.body)["error"])
        except Exception:  # noqa: BLE001 - any unreadable answer
            return f"HTTP {exc.code}"
    return str(exc) or type(exc).__name__


def container_path(mount_path: str, container_home: str) -> str:
    """Where a folder appears in a container: its mount path, below the container's home
    when relative."""
    return posixpath.normpath(posixpath.join(container_home, mount_path))


def make_volumes(attachments: list[dict[str, Any]], container_home: str) -> dict[str, Any]:
    """DockerSpawner ``volumes`` entries for attached folders: the host bind, read-only
    where the user may only read, ``rslave`` so that recoveries propagate inside."""
    volumes: dict[str, Any] = {}
    for a in attachments:
        if a.get("state") != "attached" or not a.get("target"):
            continue
        mode = "ro" if a.get("read_only") else "rw"
        volumes[a["target"]] = {
            "bind": container_path(a.get("mount_path") or a["folder"], container_home),
            "mode": f"{mode},rslave",
        }
    return volumes


async def attach_for_spawn(
    spawner: Any,
    service_url: str,
    *,
    kind: str = "local",
    uid: int | None = None,
    gid: int | None = None,
    container_home: str = "/home/jovyan",
) -> list[dict[str, Any]]:
    """Ask the service to attach ``spawner``'s folders; returns the attachments. For
    ``docker`` their binds are added to ``spawner.volumes``."""
    name = spawner.user.name
    url = f"{service_url.rstrip('/')}/api/users/{quote(name, safe='')}/mounts"
    body: dict[str, Any] = {
        "server": spawner.name or "",
        "kind": "host" if kind == "docker" else kind,
    }
    if uid is None and kind == "local":
        uid, gid = _local_ids(name)
    if uid is not None:
        body.update(uid=uid, gid=gid if gid is not None else uid)
    try:
        doc = await _call("POST", url, mint_attach_token(spawner), body)
    except Exception as exc:  # noqa: BLE001 - a spawn must not fail for a folder
        spawner.log.warning("hometier: bucket folders not attached for %s: %s", name, _error(exc))
        return []
    attachments: list[dict[str, Any]] = doc.get("attachments", [])
    for a in attachments:
        if a.get("state") == "failed":
            spawner.log.warning(
                "hometier: bucket folder %s not attached for %s: %s",
                a.get("folder"),
                name,
                a.get("error"),
            )
    if kind == "docker":
        volumes = dict(getattr(spawner, "volumes", {}) or {})
        volumes.update(make_volumes(attachments, container_home))
        spawner.volumes = volumes
    spawner._hometier_mounts = attachments
    return attachments


def _local_ids(name: str) -> tuple[int | None, int | None]:
    """A local server runs as the system user of its name: its uid/gid, if it exists (the
    service uses them only to create a home that does not exist yet)."""
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, None
    return pw.pw_uid, pw.pw_gid


async def release_after_stop(spawner: Any, service_url: str) -> dict[str, Any]:
    """Ask the service to release ``spawner``'s folders (post_stop_hook)."""
    name = spawner.user.name
    query = urlencode({"server": spawner.name or ""})
    url = f"{service_url.rstrip('/')}/api/users/{quote(name, safe='')}/mounts?{query}"
    try:
        doc: dict[str, Any] = await _call("DELETE", url, mint_attach_token(spawner))
    except Exception as exc:  # noqa: BLE001 - the check loop releases what is left
        spawner.log.warning("hometier: bucket folders not released for %s: %s", name, _error(exc))
        return {}
    for r in doc.get("released", []):
        if r.get("state") == "releasing":
            spawner.log.info("hometier: %s still in use; released later", r.get("target"))
    return doc


def _chain(first: Hook, previous: Any) -> Hook:
    async def hook(spawner: Any) -> None:
        if previous is not None:
            result = previous(spawner)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        await first(spawner)

    return hook


def configure_mounts(
    c: Any,
    *,
    service_url: str,
    kind: str = "local",
    uid: int | None = None,
    gid: int | None = None,
    container_home: str = "/home/jovyan",
    spawner_section: str = "Spawner",
) -> None:
    """Attach bucket folders at spawn and release them at stop (see the module).

    Chains after any ``pre_spawn_hook``/``post_stop_hook`` already set on
    ``c.<spawner_section>`` (so call it after ``configure_hub``, whose restore must come
    first: a folder is bound inside the restored home). Grants every user the scope the
    hooks' tokens carry, and the service ``read:users:groups`` (access follows groups).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    section = c[spawner_section]
    register_scopes(c)

    async def attach(spawner: Any) -> None:
        await attach_for_spawn(
            spawner, service_url, kind=kind, uid=uid, gid=gid, container_home=container_home
        )

    async def release(spawner: Any) -> None:
        await release_after_stop(spawner, service_url)

    pre = section["pre_spawn_hook"] if "pre_spawn_hook" in section else None
    post = section["post_stop_hook"] if "post_stop_hook" in section else None
    section.pre_spawn_hook = _chain(attach, pre)
    section.post_stop_hook = _chain(release, post)


def register_scopes(c: Any) -> None:
    """Declare the attach scope, grant it to every user for themselves (what the hooks'
    tokens carry) and let the service read users' groups (who may use what)."""
    jh = c.JupyterHub
    scopes = dict(jh.custom_scopes) if "custom_scopes" in jh else {}
    scopes.update(MOUNT_SCOPES)
    jh.custom_scopes = scopes
    roles = list(jh.load_roles) if "load_roles" in jh else []
    _grant(roles, "user", f"{ATTACH}!user", create=True)
    _grant(roles, "hometier-service", "read:users:groups", create=False)
    jh.load_roles = roles


def _grant(roles: list[dict[str, Any]], name: str, scope: str, *, create: bool) -> None:
    for role in roles:
        if role.get("name") == name:
            role["scopes"] = list(dict.fromkeys([*role.get("scopes", []), scope]))
            return
    if create:
        # JupyterHub's own user role holds "self"; a role of that name replaces it.
        roles.append({"name": name, "scopes": ["self", scope]})


__all__ = [
    "attach_for_spawn",
    "register_scopes",
    "configure_mounts",
    "container_path",
    "make_volumes",
    "release_after_stop",
]
