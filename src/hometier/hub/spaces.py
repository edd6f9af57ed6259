"""Shared spaces in servers started by local spawners (LocalProcessSpawner,
SystemUserSpawner, SystemdSpawner on The Littlest JupyterHub, DockerSpawner).

``configure_spaces(c, service_url=..., mode=...)`` installs a ``pre_spawn_hook`` (after
any already set, e.g. the restore hook of ``configure_hub``) that asks the service to
prepare the user's spaces (``POST /api/homes/USER/spaces``, with a one-spawn token) and:

``links`` (servers that run on this host as the user)
    the service writes ``~/shared/<name>`` symlinks to the spaces the user may see, as
    the user; the kernel's ACLs decide what they may do there. ``MODULEPATH`` gets the
    software spaces' module folders; a SystemdSpawner also gets the read-only spaces in
    ``readonly_paths`` (a read-only bind in the server's mount namespace).
``docker``
    each space is a bind mount of the container (``DockerSpawner.volumes``), ``ro``
    where the user only reads, and the container joins each space's gid.

Without an answer from the service the server starts without its spaces (logged), or,
with ``required=True``, the spawn fails.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from tornado.httpclient import HTTPClientError
from tornado.web import HTTPError

from hometier.hub.k8s_spaces import expand_home, fetch_mounts, make_supplemental_gids

log = logging.getLogger(__name__)
Mode = Literal["links", "docker"]
Hook = Callable[[Any], Awaitable[None] | None]


def make_modulepath(mounts: list[dict[str, Any]], existing: str, *, host: bool) -> str | None:
    key = "host_modulepath" if host else "modulepath"
    paths = [str(m[key]) for m in mounts if m.get(key)]
    if not paths:
        return None
    return ":".join([*paths, *([existing] if existing else [])])


def make_docker_volumes(mounts: list[dict[str, Any]], home: str) -> dict[str, dict[str, str]]:
    """DockerSpawner's ``volumes`` entries: host folder → bind point and mode."""
    return {
        str(m["host_path"]): {
            "bind": expand_home(str(m["mount_path"]), home),
            "mode": "ro" if m["read_only"] else "rw",
        }
        for m in mounts
    }


def apply_local(spawner: Any, mounts: list[dict[str, Any]], mode: Mode, home: str) -> None:
    base = getattr(spawner, "_hometier_spaces_base", None)
    if base is None:
        base = {
            "environment": dict(spawner.environment or {}),
            "volumes": dict(getattr(spawner, "volumes", None) or {}),
            "readonly_paths": list(getattr(spawner, "readonly_paths", None) or []),
            "group_add": list(
                (getattr(spawner, "extra_host_config", None) or {}).get("group_add", [])
            ),
        }
        spawner._hometier_spaces_base = base
    env = dict(base["environment"])
    modulepath = make_modulepath(mounts, str(env.get("MODULEPATH", "")), host=mode == "links")
    if modulepath is not None:
        env["MODULEPATH"] = modulepath
    spawner.environment = env
    if mode == "docker":
        spawner.volumes = {**base["volumes"], **make_docker_volumes(mounts, home)}
        extra = dict(getattr(spawner, "extra_host_config", None) or {})
        extra["group_add"] = make_supplemental_gids(mounts, base["group_add"])
        spawner.extra_host_config = extra
    elif hasattr(spawner, "readonly_paths"):
        ro = [str(m["host_path"]) for m in mounts if m["read_only"]]
        spawner.readonly_paths = [*base["readonly_paths"], *ro] or None


def make_spaces_hook(
    service_url: str,
    *,
    mode: Mode = "links",
    home: str = "/home/jovyan",
    required: bool = False,
    chain: Hook | None = None,
) -> Callable[[Any], Awaitable[None]]:
    async def hook(spawner: Any) -> None:
        if chain is not None:
            result = chain(spawner)
            if inspect.isawaitable(result):
                await result
        try:
            doc = await fetch_mounts(spawner, service_url, link=mode == "links")
        except (HTTPClientError, OSError) as exc:
            if required:
                raise HTTPError(
                    503, "Your shared spaces could not be prepared; try again."
                ) from exc
            (getattr(spawner, "log", None) or log).warning(
                "hometier: no shared spaces for this server: %r", exc
            )
            doc = {"mounts": []}
        apply_local(spawner, list(doc.get("mounts", [])), mode, home)

    return hook


def configure_spaces(
    c: Any,
    *,
    service_url: str,
    mode: Mode = "links",
    home: str = "/home/jovyan",
    required: bool = False,
) -> None:
    """Install the spaces hook on ``c.Spaces``' local spawner (see the module docstring);
    call it after ``configure_hub``, whose restore hook then runs first."""
    existing = c.Spawner.pre_spawn_hook if "pre_spawn_hook" in c.Spawner else None
    c.Spawner.pre_spawn_hook = make_spaces_hook(
        service_url, mode=mode, home=home, required=required, chain=existing
    )
