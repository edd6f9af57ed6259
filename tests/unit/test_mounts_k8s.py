"""Bucket folders on Kubernetes: the PersistentVolume/Claim/Secret builders for csi-s3 and
mountpoint-s3, and a whole pod rendered by KubeSpawner with the folders' claims.

No cluster runs here: manifests are compared with reviewed golden files under
``tests/golden/k8s/mounts/`` and validated against the Kubernetes 1.30 schema with
kubernetes-validate (strict). The pod hook asks "the service" which folders the user may
use: here a small tornado server on 127.0.0.1 stands in for it and records the token it
was sent (the real endpoint is exercised by the end-to-end suite). Regenerate the golden
files with ``HOMETIER_REGEN_GOLDEN=1``, then review the diff.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets.config import Config

from hometier.errors import UsageError
from hometier.hub import k8s_mounts as k
from unit.test_k8s import FakeUser, make_spawner, normalized, render, validate, z2jh_config

K8S_VERSION = "1.30.0"
GOLDEN = Path(__file__).parent.parent / "golden" / "k8s" / "mounts"


def check_golden(name: str, doc: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if os.environ.get("HOMETIER_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.fail(f"regenerated {path}: review the diff, then run again without the variable")
    assert doc == json.loads(path.read_text())


def valid(*objects: dict[str, Any]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_csi_s3_manifests_bind_one_volume_to_one_claim_with_its_own_secret():
    pv = k.make_persistent_volume(
        folder="lab-data",
        bucket="lab",
        namespace="jhub",
        prefix="/projects/2026/",
        endpoint="https://s3.example.org",
        region="eu-west-1",
    )
    pvc = k.make_persistent_volume_claim(folder="lab-data", namespace="jhub")
    secret = k.make_secret(
        folder="lab-data",
        namespace="jhub",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="s3cr3t",
        endpoint="https://s3.example.org",
        region="eu-west-1",
    )
    valid(pv, pvc, secret)
    assert pv["spec"]["claimRef"] == {"namespace": "jhub", "name": pvc["metadata"]["name"]}
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    csi = pv["spec"]["csi"]
    assert csi["volumeHandle"] == "lab/projects/2026"
    assert csi["nodePublishSecretRef"]["name"] == secret["metadata"]["name"]
    assert "s3cr3t" not in json.dumps([pv, pvc]), "credentials only in the Secret"
    check_golden("csi-s3", {"apiVersion": "v1", "kind": "List", "items": [pv, pvc, secret]})


def test_mountpoint_s3_manifests_read_only_for_everyone():
    pv = k.make_persistent_volume(
        folder="public-data",
        bucket="open-data",
        namespace="jhub",
        driver="mountpoint-s3",
        prefix="climate",
        read_only=True,
    )
    pvc = k.make_persistent_volume_claim(folder="public-data", namespace="jhub", read_only=True)
    valid(pv, pvc)
    assert "read-only" in pv["spec"]["mountOptions"]
    assert "allow-delete" not in pv["spec"]["mountOptions"]
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    check_golden("mountpoint-s3", {"apiVersion": "v1", "kind": "List", "items": [pv, pvc]})


def test_builders_refuse_what_no_driver_takes():
    with pytest.raises(UsageError):
        k.make_persistent_volume(folder="x", bucket="b", namespace="n", driver="my-own")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        k.make_persistent_volume(folder="x", bucket="b", namespace="n", mounter="goofys")


def test_each_pod_gets_its_users_claims_read_only_where_they_may_only_read():
    vols, mounts = k.add_to_pod(
        [
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-nfs"}},
            k.make_pod_volume("stale", read_only=False),
        ],
        [{"name": "home", "mountPath": "/home/jovyan"}],
        [
            {"name": "course", "mount_path": "buckets/course", "mode": "ro"},
            {"name": "lab", "mount_path": "/data/lab", "mode": "rw"},
        ],
        "/home/jovyan",
    )
    assert [v["name"] for v in vols] == ["home", "hometier-bucket-course", "hometier-bucket-lab"]
    assert mounts[1:] == [
        {
            "name": "hometier-bucket-course",
            "mountPath": "/home/jovyan/buckets/course",
            "readOnly": True,
        },
        {"name": "hometier-bucket-lab", "mountPath": "/data/lab", "readOnly": False},
    ]
    assert vols[1]["persistentVolumeClaim"] == {
        "claimName": "hometier-bucket-course",
        "readOnly": True,
    }


class _Folders(web.RequestHandler):
    """What the service answers the hook: the folders this user may use."""

    def get(self) -> None:
        self.application.settings["seen"].append(self.request.headers.get("Authorization"))
        self.finish(
            {
                "folders": [
                    {"name": "course", "mount_path": "buckets/course", "mode": "ro"},
                    {"name": "lab", "mount_path": "buckets/lab", "mode": "rw"},
                ]
            }
        )


async def test_the_kubespawner_hook_adds_the_claims_and_the_pod_is_valid():
    seen: list[str | None] = []
    app = web.Application([(r"/services/hometier/api/bucket-folders", _Folders)], seen=seen)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    try:
        c: Config = z2jh_config("dynamic")
        k.configure_kubespawner_mounts(c, service_url=f"http://127.0.0.1:{port}/services/hometier")
        user = FakeUser()
        spawner = make_spawner(c, user)
        await c.KubeSpawner.pre_spawn_hook(spawner)
        pod = await render(spawner)
    finally:
        server.stop()
    assert seen == ["token restore-token-1"]
    assert user.minted == [
        {
            "note": "hometier: bucket folders of a server",
            "expires_in": 120,
            "scopes": ["custom:hometier:attach!user=alice"],
        }
    ]
    validate(pod)
    check_golden("pod-with-folders", normalized(pod))


async def test_an_unreachable_service_spawns_the_pod_without_folders():
    c: Config = z2jh_config("dynamic")
    k.configure_kubespawner_mounts(c, service_url="http://127.0.0.1:9/services/hometier")
    spawner = make_spawner(c)
    before = (list(spawner.volumes), list(spawner.volume_mounts))
    await c.KubeSpawner.pre_spawn_hook(spawner)
    assert (list(spawner.volumes), list(spawner.volume_mounts)) == before
