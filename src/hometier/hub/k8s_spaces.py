"""KubeSpawner: mount exactly the spaces a user may see, read-only where they only read.

Pure ``make_*`` builders (plain dicts shaped like Kubernetes objects) and
``configure_kubespawner_spaces(c, ...)``, which installs a ``pre_spawn_hook`` that asks
the service what the user mounts (``POST /api/homes/USER/spaces``, with the one-spawn
token) and sets, for that spawn only:

- one volume, the spaces volume (a ReadWriteMany claim, e.g. NFS), and one
  ``volumeMount`` per space with ``subPath`` (its folder) and ``readOnly`` unless the
  user writes: with ``c.Spaces.identity = "container"`` every server is the same uid, so
  which mounts a pod gets, and whether they are read-only, is the enforcement;
- ``supplemental_gids``: each mounted space's gid (the ACL opens the folder to it);
- ``MODULEPATH``: the module files of every software space, so ``module load`` works in
  terminals and kernels.

A secret space appears in a pod only if its user is a member: its mount path names it,
its volume and subPath do not. The service being unreachable starts the server without
spaces (``required=False``, logged) or fails the spawn (``required=True``).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.web import HTTPError

from hometier.hub.k8s import DEFAULT_SERVICE_URL, _existing_hook, literal
from hometier.hub.tokens import mint_restore_token

log = logging.getLogger(__name__)
VOLUME = "hometier-spaces"
MODULEPATH = "MODULEPATH"


def make_spaces_volume(claim_name: str, name: str = VOLUME) -> dict[str, Any]:
    """The pod volume that holds every space (the spaces root's claim)."""
    return {"name": name, "persistentVolumeClaim": {"claimName": claim_name}}


def expand_home(path: str, home: str) -> str:
    return home.rstrip("/") + path[1:] if path.startswith("~/") else path


def make_space_mount(
    mount: Mapping[str, Any], *, home: str = "/home/jovyan", volume: str = VOLUME
) -> dict[str, Any]:
    """One space's ``volumeMount`` from the service's mount document."""
    return {
        "name": volume,
        "mountPath": literal(expand_home(str(mount["mount_path"]), home)),
        "subPath": literal(str(mount["sub_path"])),
        "readOnly": bool(mount["read_only"]),
    }


def make_modulepath(
    mounts: Iterable[Mapping[str, Any]], *, home: str = "/home/jovyan", existing: str = ""
) -> str | None:
    """``MODULEPATH`` with the software spaces' module folders first (None: no change)."""
    paths = [expand_home(str(m["modulepath"]), home) for m in mounts if m.get("modulepath")]
    if not paths:
        return None
    return ":".join([*paths, *([existing] if existing else [])])


def make_supplemental_gids(
    mounts: Iterable[Mapping[str, Any]], existing: Iterable[int] = ()
) -> list[int]:
    out = list(existing)
    for m in mounts:
        if int(m["gid"]) not in out:
            out.append(int(m["gid"]))
    return out


def apply_mounts(
    spawner: Any,
    mounts: list[Mapping[str, Any]],
    *,
    claim_name: str,
    home: str = "/home/jovyan",
    base: dict[str, Any],
) -> None:
    """Set this spawn's volumes, mounts, gids and MODULEPATH from ``base`` (what the
    operator configured) plus the spaces: nothing from a previous spawn survives."""
    volumes = [v for v in base["volumes"] if v.get("name") != VOLUME]
    vmounts = [m for m in base["volume_mounts"] if m.get("name") != VOLUME]
    env = dict(base["environment"])
    if mounts:
        volumes.append(make_spaces_volume(claim_name))
        vmounts += [make_space_mount(m, home=home) for m in mounts]
    spawner.volumes = volumes
    spawner.volume_mounts = vmounts
    spawner.supplemental_gids = make_supplemental_gids(mounts, base["supplemental_gids"])
    modulepath = make_modulepath(mounts, home=home, existing=str(env.get(MODULEPATH, "")))
    if modulepath is not None:
        env[MODULEPATH] = modulepath
    spawner.environment = env


async def fetch_mounts(spawner: Any, service_url: str, *, link: bool = False) -> dict[str, Any]:
    """``POST /api/homes/USER/spaces`` with a one-spawn token; the service's answer."""
    token = mint_restore_token(spawner, 300)
    url = f"{service_url.rstrip('/')}/api/homes/{quote(spawner.user.name, safe='')}/spaces"
    req = HTTPRequest(
        url,
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=json.dumps({"link": link}),
        request_timeout=600,
    )
    resp = await AsyncHTTPClient().fetch(req)
    doc: dict[str, Any] = json.loads(resp.body)
    return doc


def _base(spawner: Any) -> dict[str, Any]:
    """What the operator configured, remembered at the first spawn of this Spawner."""
    base = getattr(spawner, "_hometier_spaces_base", None)
    if base is None:
        base = {
            "volumes": list(spawner.volumes or []),
            "volume_mounts": list(spawner.volume_mounts or []),
            "environment": dict(spawner.environment or {}),
            "supplemental_gids": list(getattr(spawner, "supplemental_gids", None) or []),
        }
        spawner._hometier_spaces_base = base
    return base


def configure_kubespawner_spaces(
    c: Any,
    *,
    claim_name: str,
    service_url: str = DEFAULT_SERVICE_URL,
    home: str = "/home/jovyan",
    required: bool = False,
) -> None:
    """Mount each user's spaces in their pods (see the module docstring). Call it after
    ``configure_kubespawner``: this hook runs the earlier one first."""
    previous = _existing_hook(c)

    async def hometier_spaces_hook(spawner: Any) -> None:
        if previous is not None:
            result = previous(spawner)
            if inspect.isawaitable(result):
                await result
        base = _base(spawner)
        try:
            doc = await fetch_mounts(spawner, service_url)
        except (HTTPClientError, OSError) as exc:
            if required:
                raise HTTPError(
                    503, "Your shared spaces could not be prepared; try again."
                ) from exc
            spawner.log.warning("hometier: no shared spaces for this server: %r", exc)
            apply_mounts(spawner, [], claim_name=claim_name, home=home, base=base)
            return
        apply_mounts(spawner, doc.get("mounts", []), claim_name=claim_name, home=home, base=base)

    c.KubeSpawner.pre_spawn_hook = hometier_spaces_hook


__all__ = [
    "VOLUME",
    "apply_mounts",
    "configure_kubespawner_spaces",
    "expand_home",
    "fetch_mounts",
    "make_modulepath",
    "make_space_mount",
    "make_spaces_volume",
    "make_supplemental_gids",
]
