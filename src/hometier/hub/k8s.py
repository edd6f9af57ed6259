"""KubeSpawner integration: an init container that restores the home before the server.

``make_*`` functions are pure builders in the manner of kubespawner's ``objects.py``: they
take plain values and return plain dicts shaped like Kubernetes objects (camelCase keys,
as in a manifest), touch no cluster and no network, and are tested by comparing whole
rendered pods with literals. ``configure_kubespawner`` wires them into a JupyterHub
config (``c``): a ``pre_spawn_hook`` that, for each spawn, mints a one-spawn token and
adds the init container.

Two modes, after where the homes live:

``shared``
    Homes on a volume the service also mounts (NFS, EFS, Filestore). The init container
    only asks the service to restore and waits: it mounts nothing, needs no privilege and
    runs as ``nobody``.
``volume``
    One volume (PVC) per user, which only the user's pod can mount. The init container
    mounts it where the notebook container will, streams the latest snapshot from the
    service as a tar and unpacks it (only into a volume empty but for hometier's notice
    file). Unpacking sets each file's numeric owner, group, mode bits and ``user.*``
    xattrs, so it runs as root with ``CAP_CHOWN``, ``CAP_FOWNER``, ``CAP_FSETID``,
    ``CAP_DAC_OVERRIDE`` and ``CAP_MKNOD`` (device nodes) and every other capability
    dropped: the user namespace must admit the *baseline* Pod Security Standard, not
    *restricted*. (In ``shared`` mode the container itself meets *restricted*.)

Either way the container holds no object-store credentials: only the token in
``HOMETIER_RESTORE_TOKEN``, whose one scope is ``custom:hometier:restore!user=<name>``.

KubeSpawner formats every string of ``init_containers`` as a template (``{username}``,
``{user_server}``, ...) when it renders the pod. Configuration values given here
(``mount_path``, ``volume_name``, ``image``) are therefore templates, expanded per user by
KubeSpawner; the values the hook inserts itself (the user name, the token) are passed
through ``literal`` so that a ``{`` in a name stays a ``{``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from hometier.errors import UsageError
from hometier.hub.tokens import mint_restore_token
from hometier.tickets import mint_ticket

Mode = Literal["shared", "volume"]
MODES: tuple[Mode, ...] = ("shared", "volume")

# The service as pods in the cluster reach it: its Kubernetes Service, plus the prefix its
# routes live under when it is registered with JupyterHub (JUPYTERHUB_SERVICE_PREFIX).
DEFAULT_SERVICE_URL = "http://hometier:8765/services/hometier"
INIT_CONTAINER_NAME = "hometier-restore"
TOKEN_ENV = "HOMETIER_RESTORE_TOKEN"
NOBODY = 65534

# What unpacking a home as GNU tar -p --xattrs --numeric-owner needs as root:
# chown (CHOWN), chmod/utimes/xattrs on files it does not own (FOWNER), keep setgid on a
# file whose group root is not in (FSETID), write into directories whose mode would
# refuse it (DAC_OVERRIDE), recreate device nodes (MKNOD). All within the one volume.
UNPACK_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD")


def literal(value: str) -> str:
    """``value`` escaped so that KubeSpawner's template expansion gives it back unchanged."""
    return value.replace("{", "{{").replace("}", "}}")


def make_security_context(mode: Mode) -> dict[str, Any]:
    """The init container's ``securityContext`` for ``mode`` (see the module docstring).

    Explicit on every field that matters, so that a pod-level ``securityContext`` (z2jh
    sets ``fsGroup``; some operators set ``runAsNonRoot``) cannot change it by accident.
    """
    if mode == "shared":
        return {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsGroup": NOBODY,
            "runAsNonRoot": True,
            "runAsUser": NOBODY,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": list(UNPACK_CAPABILITIES), "drop": ["ALL"]},
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def make_fetch_command(
    *, username: str, service_url: str, mode: Mode, mount_path: str | None = None
) -> list[str]:
    """``hometier fetch-home ...`` as the init container runs it."""
    cmd = ["hometier", "fetch-home", "--user", username, "--service-url", service_url]
    if mode == "volume":
        if not mount_path:
            raise UsageError("mode 'volume' needs the mount_path to unpack into")
        cmd += ["--unpack-into", mount_path]
    return cmd


def make_token_env(
    *, token: str | None = None, token_secret: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``HOMETIER_RESTORE_TOKEN`` env entry: the token itself, or a reference
    ``{"name": SECRET, "key": KEY}`` to a Secret that holds it. Exactly one of the two."""
    if (token is None) == (token_secret is None):
        raise UsageError("give exactly one of token and token_secret")
    if token is not None:
        if not token:
            raise UsageError("the restore token is empty")
        return {"name": TOKEN_ENV, "value": token}
    assert token_secret is not None
    ref = {"name": token_secret["name"], "key": token_secret["key"]}
    return {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}


def make_init_container(
    *,
    username: str,
    image: str,
    service_url: str = DEFAULT_SERVICE_URL,
    token: str | None = None,
    token_secret: Mapping[str, str] | None = None,
    mode: Mode = "shared",
    volume_mounts: Iterable[Mapping[str, Any]] = (),
    mount_path: str | None = None,
    resources: Mapping[str, Any] | None = None,
    pull_policy: str | None = None,
    security_context: Mapping[str, Any] | None = None,
    name: str = INIT_CONTAINER_NAME,
) -> dict[str, Any]:
    """A V1Container-shaped dict that restores ``username``'s home before the server starts.

    It runs ``hometier fetch-home`` from ``image`` (the service's image) against
    ``service_url``, with the restore token in ``HOMETIER_RESTORE_TOKEN`` (``token`` or
    ``token_secret``, see ``make_token_env``). In ``volume`` mode ``volume_mounts`` must
    include one mounted at ``mount_path``: that is where the home is unpacked. In
    ``shared`` mode the container needs no mounts; any given are added as they are.
    ``security_context`` replaces ``make_security_context(mode)`` entirely.

    A failed restore exits non-zero with its message on stderr; the message is kept as
    the container's termination message (``kubectl describe pod``).
    """
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    mounts = [dict(m) for m in volume_mounts]
    if mode == "volume" and not any(m.get("mountPath") == mount_path for m in mounts):
        raise UsageError(f"mode 'volume' needs a volume mounted at {mount_path!r}")
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": make_fetch_command(
            username=username, service_url=service_url, mode=mode, mount_path=mount_path
        ),
        "env": [make_token_env(token=token, token_secret=token_secret)],
        "securityContext": dict(security_context or make_security_context(mode)),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if mounts:
        container["volumeMounts"] = mounts
    if resources:
        container["resources"] = dict(resources)
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    return container


def find_volume_mount(
    volume_mounts: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    mount_path: str,
    volume_name: str | None = None,
) -> dict[str, Any]:
    """The mount the init container needs to reach the home at ``mount_path``.

    With ``volume_name``, that volume at ``mount_path``. Without it, the notebook
    container's own mount at ``mount_path`` (from ``KubeSpawner.volume_mounts``, a list or
    a dict), so the init container sees exactly what the server will see, ``subPath``
    included. ``UsageError`` if there is none.
    """
    if volume_name:
        return {"name": volume_name, "mountPath": mount_path}
    mounts = volume_mounts.values() if isinstance(volume_mounts, Mapping) else volume_mounts
    for m in mounts:
        if m.get("mountPath") == mount_path:
            keep = ("name", "mountPath", "subPath", "subPathExpr")
            return {k: m[k] for k in keep if k in m}
    raise UsageError(
        f"hometier: no volume is mounted at {mount_path} in KubeSpawner.volume_mounts; "
        "set volume_name (and mount_path) in configure_kubespawner"
    )


def _as_list(containers: Any) -> list[dict[str, Any]]:
    """``KubeSpawner.init_containers`` (a list, or a dict sorted by key) as a list."""
    if isinstance(containers, Mapping):
        return [containers[k] for k in sorted(containers)]
    return list(containers or [])


def _existing_hook(c: Any) -> Callable[[Any], Any] | None:
    # Look without touching: reading a missing key of a traitlets Config creates it.
    for section in ("KubeSpawner", "Spawner"):
        if section in c and "pre_spawn_hook" in c[section]:
            hook: Any = c[section]["pre_spawn_hook"]
            if callable(hook):
                found: Callable[[Any], Any] = hook
                return found
    return None


def _service_token(c: Any) -> str | None:
    """The ``api_token`` of the ``hometier`` service already registered in ``c``."""
    if "JupyterHub" not in c or "services" not in c.JupyterHub:
        return None
    services = c.JupyterHub.services
    if isinstance(services, Mapping):
        entries = [{"name": key, **dict(value)} for key, value in services.items()]
    else:
        entries = list(services)
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") == "hometier":
            token = entry.get("api_token") or entry.get("apiToken")
            if token:
                return str(token)
    return None


def configure_kubespawner(
    c: Any,
    *,
    image: str,
    service_url: str = DEFAULT_SERVICE_URL,
    mode: Mode = "shared",
    volume_name: str | None = None,
    mount_path: str = "/home/jovyan",
    token_ttl: int = 900,
    resources: Mapping[str, Any] | None = None,
    pull_policy: str | None = None,
    security_context: Mapping[str, Any] | None = None,
    first: bool = True,
    api_token: str | None = None,
) -> None:
    """Restore each user's home before KubeSpawner starts their server.

    Installs ``c.KubeSpawner.pre_spawn_hook``, calling any hook already set on
    ``c.KubeSpawner`` or ``c.Spawner`` first. For each spawn the hook makes a credential
    valid ``token_ttl`` seconds that can only restore this user's home and puts the init
    container on that spawner, replacing the one of its previous spawn. The credential is
    a restore ticket (``hometier.tickets``) signed with the service's token — ``api_token``,
    or the ``api_token`` of the ``hometier`` entry of ``c.JupyterHub.services`` (z2jh's
    ``hub.services.hometier.apiToken``) — which the service checks without asking the
    Hub; without one, a Hub token is minted (``mint_restore_token``).
    It runs *before* the operator's own init containers (``first=False``: after them),
    because one that writes into the home (skeleton files, a git pull) would otherwise
    find it still archived, and in ``volume`` mode make the volume look in use.

    ``mount_path`` and ``volume_name`` are KubeSpawner templates (``/home/{username}``,
    ``volume-{user_server}``). In ``volume`` mode, without ``volume_name``, the volume is
    the one ``KubeSpawner.volume_mounts`` mounts at ``mount_path`` (z2jh's per-user
    storage); named servers are left alone there, since each has a volume of its own and
    the archived home is the user's. Call this after every other setting of
    ``pre_spawn_hook``: a later one replaces this hook.
    """
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if token_ttl <= 0:
        raise UsageError("token_ttl must be a positive number of seconds")
    previous = _existing_hook(c)
    secret = api_token or _service_token(c)

    async def hometier_pre_spawn_hook(spawner: Any) -> None:
        if previous is not None:
            result = previous(spawner)
            if inspect.isawaitable(result):
                await result
        # The Spawner object lives across spawns of one server: drop last spawn's copy.
        others = [
            ic for ic in _as_list(spawner.init_containers) if ic.get("name") != INIT_CONTAINER_NAME
        ]
        if mode == "volume" and spawner.name:
            # A named server gets a volume of its own (z2jh: claim-{user_server}); the
            # archived home is the user's, and belongs in the default server's volume.
            spawner.init_containers = others
            return
        start_timeout = getattr(spawner, "start_timeout", 0) or 0
        if token_ttl < start_timeout:
            spawner.log.warning(
                "hometier: the restore token lives %ss, less than start_timeout (%ss); "
                "a long restore may be cut off",
                token_ttl,
                start_timeout,
            )
        mounts = []
        if mode == "volume":
            mounts = [find_volume_mount(spawner.volume_mounts, mount_path, volume_name)]
        if secret:
            token = mint_ticket(secret, spawner.user.name, token_ttl)
        else:
            token = mint_restore_token(spawner, token_ttl)
        ours = make_init_container(
            username=literal(spawner.user.name),
            image=image,
            service_url=service_url,
            token=literal(token),
            mode=mode,
            volume_mounts=mounts,
            mount_path=mount_path if mode == "volume" else None,
            resources=resources,
            pull_policy=pull_policy,
            security_context=security_context,
        )
        spawner.init_containers = [ours, *others] if first else [*others, ours]

    c.KubeSpawner.pre_spawn_hook = hometier_pre_spawn_hook


__all__ = [
    "DEFAULT_SERVICE_URL",
    "INIT_CONTAINER_NAME",
    "MODES",
    "TOKEN_ENV",
    "configure_kubespawner",
    "find_volume_mount",
    "literal",
    "make_fetch_command",
    "make_init_container",
    "make_security_context",
    "make_token_env",
]
