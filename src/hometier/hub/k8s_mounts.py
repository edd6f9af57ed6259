"""Bucket folders on Kubernetes: manifests for an existing CSI driver, and the pod side.

hometier runs no driver of its own there. The ``make_*`` builders are pure (plain values
in, manifest-shaped dicts out, like ``hub.k8s``) and produce, per bucket folder, one
PersistentVolume bound to one PersistentVolumeClaim (``storageClassName: ""``, a
``claimRef``: static provisioning, nothing else can claim it) for one of two drivers:

``csi-s3`` (github.com/yandex-cloud/k8s-csi-s3, driver ``ru.yandex.s3.csi``)
    Any S3 endpoint; the folder's credentials go in a Secret of their own
    (``make_secret``: ``accessKeyID``, ``secretAccessKey``, ``endpoint``, ``region``), which
    the driver's node plugin reads and no user pod ever mounts. The volume handle is
    ``bucket/prefix``.
``mountpoint-s3`` (github.com/awslabs/mountpoint-s3-csi-driver, ``s3.csi.aws.com``)
    The driver's own credentials (IRSA or its ``aws-secret``); endpoint, region, prefix,
    owner and ``read-only`` are mount options.

Read-only per user is the pod's business: ``make_pod_volume``/``make_volume_mount``
mark the claim and the mount ``readOnly`` for a user who may only read (the kubelet's
bind is then read-only: EROFS), and a folder read-only for everyone is mounted
read-only by the driver too. ``configure_kubespawner_mounts`` adds them to each pod,
asking the service which folders the user may use (with a token that can do nothing
else). Generate the manifests with ``hometier mounts k8s``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hometier.errors import UsageError

Driver = Literal["csi-s3", "mountpoint-s3"]
DRIVERS: dict[str, str] = {"csi-s3": "ru.yandex.s3.csi", "mountpoint-s3": "s3.csi.aws.com"}
PREFIX = "hometier-bucket-"
CAPACITY = "1Ti"  # required by the API, ignored by both drivers
LABELS = {"app.kubernetes.io/managed-by": "hometier", "app.kubernetes.io/component": "bucket"}


def claim_name(folder: str) -> str:
    return f"{PREFIX}{folder}"


def secret_name(folder: str) -> str:
    return f"{PREFIX}{folder}-credentials"


def _labels(folder: str) -> dict[str, str]:
    return {**LABELS, "hometier.io/bucket-folder": folder}


def _driver(driver: str) -> str:
    if driver not in DRIVERS:
        raise UsageError(f"driver must be one of {', '.join(DRIVERS)}, not {driver!r}")
    return DRIVERS[driver]


def make_secret(
    *,
    folder: str,
    namespace: str,
    access_key_id: str,
    secret_access_key: str,
    endpoint: str,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """The Secret csi-s3 reads for one folder (values base64 in ``data``)."""

    def b64(v: str) -> str:
        return base64.b64encode(v.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(folder),
            "namespace": namespace,
            "labels": _labels(folder),
        },
        "type": "Opaque",
        "data": {
            "accessKeyID": b64(access_key_id),
            "secretAccessKey": b64(secret_access_key),
            "endpoint": b64(endpoint or f"https://s3.{region}.amazonaws.com"),
            "region": b64(region),
        },
    }


def make_persistent_volume(
    *,
    folder: str,
    bucket: str,
    namespace: str,
    driver: Driver = "csi-s3",
    prefix: str = "",
    endpoint: str = "",
    region: str = "us-east-1",
    read_only: bool = False,
    uid: int = 1000,
    gid: int = 100,
    mounter: str = "geesefs",
    secret_namespace: str | None = None,
) -> dict[str, Any]:
    """The PersistentVolume of one folder, bound in advance to its claim in
    ``namespace`` (the hub's); files appear owned by ``uid``:``gid`` (z2jh's jovyan)."""
    name = _driver(driver)
    mode = "ReadOnlyMany" if read_only else "ReadWriteMany"
    csi: dict[str, Any] = {"driver": name}
    spec: dict[str, Any] = {
        "capacity": {"storage": CAPACITY},
        "accessModes": [mode],
        "persistentVolumeReclaimPolicy": "Retain",  # deleting the claim keeps the bucket
        "storageClassName": "",
        "claimRef": {"namespace": namespace, "name": claim_name(folder)},
        "csi": csi,
    }
    if driver == "csi-s3":
        if mounter not in ("geesefs", "s3fs", "rclone"):
            raise UsageError("the csi-s3 mounter is geesefs, s3fs or rclone")
        ref = {"name": secret_name(folder), "namespace": secret_namespace or namespace}
        csi.update(
            volumeHandle=f"{bucket}/{prefix.strip('/')}" if prefix.strip("/") else bucket,
            controllerPublishSecretRef=dict(ref),
            nodePublishSecretRef=dict(ref),
            nodeStageSecretRef=dict(ref),
            volumeAttributes={
                "capacity": CAPACITY,
                "mounter": mounter,
                "options": _csi_s3_options(mounter, uid, gid, read_only),
            },
        )
        csi["readOnly"] = read_only
    else:
        options = ["allow-other", f"uid={uid}", f"gid={gid}", f"region {region}"]
        if prefix.strip("/"):
            options.append(f"prefix {prefix.strip('/')}/")
        if endpoint:
            options.append(f"endpoint-url {endpoint}")
        options.append("read-only" if read_only else "allow-delete")
        spec["mountOptions"] = options
        csi.update(
            volumeHandle=f"{PREFIX}{folder}",
            volumeAttributes={"bucketName": bucket},
            readOnly=read_only,
        )
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{PREFIX}{folder}-{namespace}", "labels": _labels(folder)},
        "spec": spec,
    }


def _csi_s3_options(mounter: str, uid: int, gid: int, read_only: bool) -> str:
    if mounter == "s3fs":
        opts = [f"-o uid={uid}", f"-o gid={gid}", "-o umask=0007", "-o allow_other"]
        return " ".join(opts + (["-o ro"] if read_only else []))
    if mounter == "rclone":
        opts = [f"--uid={uid}", f"--gid={gid}", "--umask=0007", "--allow-other"]
        return " ".join(opts + (["--read-only"] if read_only else []))
    opts = [f"--uid {uid}", f"--gid {gid}", "--dir-mode 0770", "--file-mode 0660"]
    return " ".join(opts + (["-o ro"] if read_only else []))


def make_persistent_volume_claim(
    *, folder: str, namespace: str, read_only: bool = False
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(folder), "namespace": namespace, "labels": _labels(folder)},
        "spec": {
            "accessModes": ["ReadOnlyMany" if read_only else "ReadWriteMany"],
            "storageClassName": "",
            "volumeName": f"{PREFIX}{folder}-{namespace}",
            "resources": {"requests": {"storage": CAPACITY}},
        },
    }


def make_pod_volume(folder: str, *, read_only: bool) -> dict[str, Any]:
    claim = {"claimName": claim_name(folder), "readOnly": read_only}
    return {"name": f"{PREFIX}{folder}", "persistentVolumeClaim": claim}


def make_volume_mount(
    folder: str, mount_path: str, *, read_only: bool, home: str = "/home/jovyan"
) -> dict[str, Any]:
    path = posixpath.normpath(posixpath.join(home, mount_path))
    return {"name": f"{PREFIX}{folder}", "mountPath": path, "readOnly": read_only}


def add_to_pod(
    volumes: Any, volume_mounts: Any, folders: list[Mapping[str, Any]], home: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """KubeSpawner's ``volumes``/``volume_mounts`` with these folders' (``name``,
    ``mount_path``, ``mode``) replacing any earlier ones of ours."""
    vols = [dict(v) for v in _as_list(volumes) if not v.get("name", "").startswith(PREFIX)]
    mounts = [dict(m) for m in _as_list(volume_mounts) if not m.get("name", "").startswith(PREFIX)]
    for f in folders:
        ro = f.get("mode") != "rw"
        vols.append(make_pod_volume(str(f["name"]), read_only=ro))
        mounts.append(
            make_volume_mount(str(f["name"]), str(f["mount_path"]), read_only=ro, home=home)
        )
    return vols, mounts


def _as_list(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, Mapping):
        return [items[k] for k in sorted(items)]
    return list(items or [])


def configure_kubespawner_mounts(
    c: Any, *, service_url: str, home: str = "/home/jovyan", token_ttl: int = 120
) -> None:
    """Give each pod the claims of the folders its user may use (call after
    ``configure_kubespawner``; chains any hook set before). Declares and grants the
    scope its tokens carry, as ``hub.mounts.configure_mounts`` does."""
    from hometier.hub.mounts import mint_attach_token, register_scopes

    register_scopes(c)
    section = c.KubeSpawner
    previous = section["pre_spawn_hook"] if "pre_spawn_hook" in section else None

    async def hook(spawner: Any) -> None:
        if previous is not None:
            result = previous(spawner)
            if asyncio.iscoroutine(result):
                await result
        token = mint_attach_token(spawner, token_ttl)
        req = HTTPRequest(
            f"{service_url.rstrip('/')}/api/bucket-folders",
            headers={"Authorization": f"token {token}"},
            request_timeout=30,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
            found = json.loads(resp.body)["folders"]
        except Exception as exc:  # noqa: BLE001 - a spawn must not fail for a folder
            spawner.log.warning(
                "hometier: bucket folders of %s unknown: %s", quote(spawner.user.name), exc
            )
            return
        spawner.volumes, spawner.volume_mounts = add_to_pod(
            spawner.volumes, spawner.volume_mounts, found, home
        )

    section.pre_spawn_hook = hook


__all__ = [
    "DRIVERS",
    "add_to_pod",
    "claim_name",
    "configure_kubespawner_mounts",
    "make_persistent_volume",
    "make_persistent_volume_claim",
    "make_pod_volume",
    "make_secret",
    "make_volume_mount",
]
