"""The KubeSpawner init container: pure builders, and whole pods rendered by KubeSpawner.

No cluster can run here, so the pod tests build a real ``KubeSpawner`` with its
Kubernetes client patched out (``load_config``, ``shared_client``: nothing else touches
the API before ``start``), run the hook ``configure_kubespawner`` installs, render the pod
with ``get_pod_manifest`` and compare the whole manifest with a reviewed golden file
(kubespawner's own tests do the same). ``FakeUser`` stands in for the Hub's ``User``: the
manifest needs only its ``name``/``id`` and the token ``new_api_token`` returns, and the
real call (scopes a user may hold, expiry) is covered by the JupyterHub end-to-end tests.

Every rendered pod is also validated against the Kubernetes 1.30 schema with
kubernetes-validate (strict: unknown fields fail), and checked for what the schema cannot
see (unique container names, mounts of declared volumes).

To regenerate the golden files after a deliberate change: ``HOMETIER_REGEN_GOLDEN=1
pytest tests/unit/test_k8s.py``, then review the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
from jupyterhub.objects import Server
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from traitlets.config import Config

from hometier.errors import UsageError
from hometier.hub.k8s import (
    INIT_CONTAINER_NAME,
    TOKEN_ENV,
    configure_kubespawner,
    find_volume_mount,
    literal,
    make_init_container,
)
from hometier.hub.tokens import restore_scope

K8S_VERSION = "1.30.0"
GOLDEN = Path(__file__).parent.parent / "golden" / "k8s"
IMAGE = "registry.example.org/hometier:0.2.0"
URL = "http://hometier:8765/services/hometier"
VARYING = ("hub.jupyter.org/jupyterhub-version", "hub.jupyter.org/kubespawner-version")


class FakeUser:
    """The part of JupyterHub's ``User`` a KubeSpawner and the hook touch."""

    def __init__(self, name: str = "alice") -> None:
        self.name = name
        self.id = 7
        self.url = f"/user/{name}/"
        self.minted: list[dict[str, Any]] = []

    def new_api_token(self, **kwargs: Any) -> str:
        self.minted.append(kwargs)
        return f"restore-token-{len(self.minted)}"


class FakeHub:
    public_host = ""
    url = "http://hub:8081/hub/"
    base_url = "/hub/"
    api_url = "http://hub:8081/hub/api"


def z2jh_config(storage: str) -> Config:
    """What z2jh's hub config sets on KubeSpawner, trimmed to what shapes the pod."""
    c = Config()
    c.KubeSpawner.namespace = "jhub"
    c.KubeSpawner.image = "quay.io/jupyterhub/k8s-singleuser-sample:4.1.0"
    c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100
    c.KubeSpawner.start_timeout = 300
    c.KubeSpawner.extra_labels = {"hub.jupyter.org/network-access-hub": "true"}
    if storage == "dynamic":  # one PVC per user
        c.KubeSpawner.pvc_name_template = "claim-{user_server}"
        c.KubeSpawner.volumes = [
            {"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
        ]
        c.KubeSpawner.volume_mounts = [
            {"mountPath": "/home/jovyan", "name": "volume-{user_server}"}
        ]
    else:  # one NFS volume, a subPath per user, and an operator's own init container
        home = {"name": "home", "mountPath": "/home/jovyan", "subPath": "home/{username}"}
        c.KubeSpawner.volumes = [
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-nfs"}}
        ]
        c.KubeSpawner.volume_mounts = [home]
        c.KubeSpawner.init_containers = [
            {
                "name": "skel",
                "image": "busybox:1.36",
                "command": ["sh", "-c", "cp -rn /etc/skel/. /home/jovyan/"],
                "volumeMounts": [home],
            }
        ]
    return c


def make_spawner(c: Config, user: FakeUser | None = None, name: str = "") -> Any:
    with (
        mock.patch("kubespawner.spawner.load_config"),
        mock.patch("kubespawner.spawner.shared_client"),
    ):
        # A server's name comes from the Hub's database (orm_spawner); a subclass stands in.
        cls = type("NamedKubeSpawner", (KubeSpawner,), {"name": name}) if name else KubeSpawner
        spawner = cls(config=c, user=user or FakeUser(), hub=FakeHub())
    path = f"/user/{spawner.user.name}/{name}/" if name else f"/user/{spawner.user.name}/"
    spawner.server = Server(ip="0.0.0.0", port=8888, base_url=path)
    spawner.api_token = "notebook-api-token"
    return spawner


async def render(spawner: Any) -> dict[str, Any]:
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as api:
        doc: dict[str, Any] = api.sanitize_for_serialization(pod)
    return doc


def validate(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    spec = pod["spec"]
    containers = spec["containers"] + spec.get("initContainers", [])
    names = [ct["name"] for ct in containers]
    assert len(names) == len(set(names)), names
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for ct in containers:
        for m in ct.get("volumeMounts", []):
            assert m["name"] in volumes, (ct["name"], m)


def normalized(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod without what changes with the installed versions of JupyterHub/KubeSpawner."""
    pod = json.loads(json.dumps(pod))
    for key in VARYING:
        if key in pod["metadata"].get("annotations", {}):
            pod["metadata"]["annotations"][key] = "*"
    return pod


def check_golden(name: str, pod: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(normalized(pod), indent=2, sort_keys=True) + "\n"
    if os.environ.get("HOMETIER_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.fail(f"regenerated {path}: review the diff, then run again without the variable")
    assert normalized(pod) == json.loads(path.read_text())


# -- the builder -----------------------------------------------------------------------


def test_shared_mode_asks_the_service_and_holds_nothing_but_the_token() -> None:
    ct = make_init_container(username="alice", image=IMAGE, service_url=URL, token="t0k")
    assert ct == {
        "name": "hometier-restore",
        "image": IMAGE,
        "command": ["hometier", "fetch-home", "--user", "alice", "--service-url", URL],
        "env": [{"name": "HOMETIER_RESTORE_TOKEN", "value": "t0k"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsGroup": 65534,
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def test_volume_mode_mounts_the_home_and_unpacks_as_root_with_only_file_capabilities() -> None:
    mount = {"name": "volume-{user_server}", "mountPath": "/home/jovyan"}
    ct = make_init_container(
        username="alice",
        image=IMAGE,
        service_url=URL,
        token="t0k",
        mode="volume",
        volume_mounts=[mount],
        mount_path="/home/jovyan",
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}},
        pull_policy="IfNotPresent",
    )
    assert ct["command"] == [
        "hometier",
        "fetch-home",
        "--user",
        "alice",
        "--service-url",
        URL,
        "--unpack-into",
        "/home/jovyan",
    ]
    assert ct["volumeMounts"] == [mount]
    assert ct["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {
            "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD"],
            "drop": ["ALL"],
        },
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert ct["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}}
    assert ct["imagePullPolicy"] == "IfNotPresent"


def test_token_from_a_secret_and_a_replaced_security_context() -> None:
    ct = make_init_container(
        username="alice",
        image=IMAGE,
        token_secret={"name": "restore-alice", "key": "token"},
        security_context={"runAsUser": 1000},
    )
    assert ct["env"] == [
        {
            "name": TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": "restore-alice", "key": "token"}},
        }
    ]
    assert ct["securityContext"] == {"runAsUser": 1000}
    assert ct["command"][-1] == "http://hometier:8765/services/hometier"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no token
        {"token": "a", "token_secret": {"name": "s", "key": "k"}},
        {"token": ""},
        {"token": "a", "mode": "tarball"},
        {"token": "a", "mode": "volume", "mount_path": "/home/jovyan"},  # no such mount
        {"token": "a", "mode": "volume", "volume_mounts": [{"name": "v", "mountPath": "/h"}]},
    ],
)
def test_builder_refuses_what_cannot_work(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        make_init_container(username="alice", image=IMAGE, **kwargs)


def test_find_volume_mount_reuses_the_notebook_mount_with_its_subpath() -> None:
    mounts = [
        {"name": "shared", "mountPath": "/srv/shared", "readOnly": True},
        {"name": "home", "mountPath": "/home/jovyan", "subPath": "{username}", "readOnly": False},
    ]
    assert find_volume_mount(mounts, "/home/jovyan") == {
        "name": "home",
        "mountPath": "/home/jovyan",
        "subPath": "{username}",
    }
    assert find_volume_mount({"01": mounts[1]}, "/home/jovyan")["name"] == "home"
    assert find_volume_mount(mounts, "/home/x", "vol") == {"name": "vol", "mountPath": "/home/x"}
    with pytest.raises(UsageError, match="no volume is mounted at /home/x"):
        find_volume_mount(mounts, "/home/x")


def test_literal_survives_kubespawner_formatting() -> None:
    for s in ("alice", "a{b}c", "{username}", "}{", "x-"):
        assert literal(s).format(username="nope") == s


def test_configure_refuses_bad_arguments() -> None:
    with pytest.raises(UsageError):
        configure_kubespawner(Config(), image=IMAGE, mode="nfs")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        configure_kubespawner(Config(), image=IMAGE, token_ttl=0)


# -- whole pods, rendered by KubeSpawner -------------------------------------------------


async def test_shared_mode_pod_golden() -> None:
    c = z2jh_config("static")
    configure_kubespawner(c, image=IMAGE, service_url=URL, mode="shared", token_ttl=600)
    user = FakeUser()
    spawner = make_spawner(c, user)
    await spawner.run_pre_spawn_hook()
    pod = await render(spawner)
    validate(pod)
    check_golden("pod-shared", pod)
    assert user.minted == [
        {
            "note": "hometier: restore before spawn",
            "expires_in": 600,
            "scopes": [restore_scope("alice")],
        }
    ]
    # The token reaches the init container only; the notebook never sees it.
    init, skel = pod["spec"]["initContainers"]
    assert (init["name"], skel["name"]) == (INIT_CONTAINER_NAME, "skel")
    assert {"name": TOKEN_ENV, "value": "restore-token-1"} in init["env"]
    assert "restore-token-1" not in json.dumps(pod["spec"]["containers"])


async def test_volume_mode_pod_golden() -> None:
    c = z2jh_config("dynamic")
    configure_kubespawner(
        c,
        image=IMAGE,
        service_url=URL,
        mode="volume",
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}},
        pull_policy="IfNotPresent",
    )
    spawner = make_spawner(c)
    await spawner.run_pre_spawn_hook()
    pod = await render(spawner)
    validate(pod)
    check_golden("pod-volume", pod)
    (init,) = pod["spec"]["initContainers"]
    (notebook,) = pod["spec"]["containers"]
    # The init container sees the home exactly where and as the notebook will.
    assert (
        init["volumeMounts"]
        == notebook["volumeMounts"]
        == [{"mountPath": "/home/jovyan", "name": "volume-alice"}]
    )
    assert init["command"][-2:] == ["--unpack-into", "/home/jovyan"]


async def test_templates_expand_per_user_and_names_pass_through_literally() -> None:
    c = z2jh_config("dynamic")
    c.KubeSpawner.volume_mounts = [
        {"name": "volume-{user_server}", "mountPath": "/home/{username}"}
    ]
    configure_kubespawner(c, image=IMAGE, mode="volume", mount_path="/home/{username}")
    spawner = make_spawner(c, FakeUser("dé{v}-"))
    await spawner.run_pre_spawn_hook()
    pod = await render(spawner)
    validate(pod)
    init = pod["spec"]["initContainers"][0]
    home = pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert init["volumeMounts"][0]["mountPath"] == home != "/home/{username}"
    assert init["command"] == [
        "hometier",
        "fetch-home",
        "--user",
        "dé{v}-",
        "--service-url",
        "http://hometier:8765/services/hometier",
        "--unpack-into",
        home,
    ]


async def test_hook_chains_an_existing_hook_and_replaces_its_container_on_respawn() -> None:
    calls: list[str] = []

    async def operators_hook(spawner: Any) -> None:
        calls.append(spawner.user.name)

    c = z2jh_config("static")
    c.Spawner.pre_spawn_hook = operators_hook
    configure_kubespawner(c, image=IMAGE, first=False)
    spawner = make_spawner(c)
    for _ in range(2):  # JupyterHub keeps one Spawner across the spawns of a server
        await spawner.run_pre_spawn_hook()
    assert calls == ["alice", "alice"]
    assert [ic["name"] for ic in spawner.init_containers] == ["skel", INIT_CONTAINER_NAME]
    assert spawner.init_containers[1]["env"][0]["value"] == "restore-token-2"
    validate(await render(spawner))


async def test_volume_mode_without_a_home_mount_fails_the_spawn_before_minting() -> None:
    c = z2jh_config("dynamic")
    configure_kubespawner(c, image=IMAGE, mode="volume", mount_path="/home/elsewhere")
    user = FakeUser()
    spawner = make_spawner(c, user)
    with pytest.raises(UsageError, match="no volume is mounted at /home/elsewhere"):
        await spawner.run_pre_spawn_hook()
    assert user.minted == []


async def test_named_servers_have_their_own_volume_and_get_no_restore_in_volume_mode() -> None:
    c = z2jh_config("dynamic")
    configure_kubespawner(c, image=IMAGE, mode="volume")
    user = FakeUser()
    spawner = make_spawner(c, user, name="gpu")
    await spawner.run_pre_spawn_hook()
    pod = await render(spawner)
    validate(pod)
    assert "initContainers" not in pod["spec"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "claim-alice--gpu"
    assert user.minted == []
    # In shared mode a named server mounts the same home: it is restored like the default.
    c = z2jh_config("static")
    configure_kubespawner(c, image=IMAGE, mode="shared")
    spawner = make_spawner(c, user, name="gpu")
    await spawner.run_pre_spawn_hook()
    assert spawner.init_containers[0]["name"] == INIT_CONTAINER_NAME


async def test_short_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    c = z2jh_config("static")
    configure_kubespawner(c, image=IMAGE, token_ttl=60)
    spawner = make_spawner(c)
    await spawner.run_pre_spawn_hook()
    assert "less than start_timeout" in caplog.text
