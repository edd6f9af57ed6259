"""KubeSpawner pods with shared spaces, one per access level, rendered and golden-tested.

As in test_k8s.py, a real ``KubeSpawner`` (its Kubernetes client patched out: no API
server can run here) renders the pod after ``apply_mounts`` set this spawn's volumes,
mounts, gids and ``MODULEPATH`` from the service's mount documents; every pod is
compared with a reviewed golden file under ``tests/golden/k8s/spaces/`` and validated
against the Kubernetes 1.30 schema (kubernetes-validate, strict).

Regenerate after a deliberate change: ``HOMETIER_REGEN_GOLDEN=1 pytest
tests/unit/test_spaces_k8s.py``, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hometier.hub.k8s_spaces import (
    VOLUME,
    _base,
    apply_mounts,
    make_modulepath,
    make_space_mount,
)
from hometier.spaces.mounts import Mount
from unit.test_k8s import VARYING, FakeUser, make_spawner, render, validate, z2jh_config

GOLDEN = Path(__file__).parent.parent / "golden" / "k8s" / "spaces"
CLAIM = "hometier-spaces"


def mount(name: str, level: str, role: str, *, kind: str = "data", sid: int = 1) -> dict[str, Any]:
    """A mount document exactly as ``hometier.spaces.mounts.mounts_for`` makes it."""
    key = f"{sid:032x}"
    sub = f".secret/{key}" if level == "secret" else name
    path = f"/opt/software/{name}" if kind == "software" else f"~/shared/{name}"
    return Mount(
        name=name,
        level=level,
        kind=kind,
        role=role,
        read_only=role != "writer",
        state="active",
        mount_path=path,
        host_path=f"/srv/spaces/{sub}",
        sub_path=sub,
        volume=f"hometier-space-{sid}",
        gid=61000 + sid,
        modulepath=f"{path}/modulefiles" if kind == "software" else None,
        host_modulepath=f"/srv/spaces/{sub}/modulefiles" if kind == "software" else None,
    ).doc()


CASES = {
    "public-reader": [mount("datasets", "public", "reader")],
    "private-writer": [mount("lab", "private", "writer", sid=2)],
    "secret-member": [mount("merger", "secret", "reader", sid=3)],
    "software": [mount("bio", "public", "reader", kind="software", sid=4)],
    "none": [],
}


def pod_for(mounts: list[dict[str, Any]]) -> Any:
    spawner = make_spawner(z2jh_config("dynamic"), FakeUser("alice"))
    apply_mounts(spawner, mounts, claim_name=CLAIM, base=_base(spawner))
    return spawner


@pytest.mark.parametrize("case", sorted(CASES))
async def test_pod_for_each_level_matches_its_golden_file(case: str) -> None:
    pod = await render(pod_for(CASES[case]))
    for key in VARYING:
        pod["metadata"]["labels"].pop(key, None)
        pod["metadata"].get("annotations", {}).pop(key, None)
    validate(pod)
    golden = GOLDEN / f"pod-{case}.json"
    text = json.dumps(pod, indent=2, sort_keys=True) + "\n"
    if os.environ.get("HOMETIER_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


async def test_read_only_exactly_where_the_user_only_reads() -> None:
    mounts = [*CASES["public-reader"], *CASES["private-writer"], *CASES["secret-member"]]
    pod = await render(pod_for(mounts))
    [notebook] = pod["spec"]["containers"]
    ours = {m["mountPath"]: m for m in notebook["volumeMounts"] if m["name"] == VOLUME}
    assert ours["/home/jovyan/shared/datasets"]["readOnly"] is True
    assert ours["/home/jovyan/shared/lab"]["readOnly"] is False
    assert ours["/home/jovyan/shared/merger"]["readOnly"] is True
    # The secret space's folder is its key; its name is only the member's mount path.
    assert "merger" not in ours["/home/jovyan/shared/merger"]["subPath"]
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [61001, 61002, 61003]


async def test_a_later_spawn_keeps_nothing_of_the_previous_one() -> None:
    spawner = make_spawner(z2jh_config("dynamic"), FakeUser("alice"))
    apply_mounts(spawner, CASES["private-writer"], claim_name=CLAIM, base=_base(spawner))
    # Removed from the space meanwhile: the next pod has no trace of it.
    apply_mounts(spawner, [], claim_name=CLAIM, base=_base(spawner))
    pod = await render(spawner)
    assert VOLUME not in json.dumps(pod)
    assert "lab" not in json.dumps(pod["spec"]["containers"][0].get("volumeMounts", []))
    assert not pod["spec"]["securityContext"].get("supplementalGroups")


def test_modulepath_puts_software_first_and_keeps_the_image_s() -> None:
    soft = CASES["software"]
    assert make_modulepath(soft, existing="/etc/modulefiles") == (
        "/opt/software/bio/modulefiles:/etc/modulefiles"
    )
    assert make_modulepath(CASES["public-reader"]) is None


def test_template_braces_in_paths_stay_literal() -> None:
    doc = dict(CASES["public-reader"][0], mount_path="~/shared/{x}")
    assert make_space_mount(doc)["mountPath"] == "/home/jovyan/shared/{{x}}"
