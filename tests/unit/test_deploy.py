"""The deployment files, checked offline.

- Every manifest under ``deploy/k8s`` validates against the Kubernetes 1.30 schema with
  kubernetes-validate, strictly (an unknown or misspelt field fails).
- They agree with each other where the schema cannot look: selectors and labels, port
  names, volumes, the Secret's keys, the route prefix of the probes.
- The z2jh snippet (``deploy/z2jh/values.yaml``) registers the service at the Service's
  address, defines hometier's scopes, grants the roles ``configure_hub`` grants, lets user
  pods reach the service, and its ``extraConfig``, run as the Hub would run it, installs
  the spawn hook with the Deployment's image and a token that outlives the start timeout.
- The Dockerfile is the minimal standard one (it cannot be built here).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from hometier.hub.k8s import DEFAULT_SERVICE_URL, INIT_CONTAINER_NAME, TOKEN_ENV
from hometier.scopes import CUSTOM_SCOPES

K8S_VERSION = "1.30.0"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects() -> dict[str, dict[str, Any]]:
    """Every object under deploy/k8s by ``Kind/name``."""
    found = {}
    for path in MANIFESTS:
        for doc in load(path):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return objects()


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "z2jh" / "values.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def pod(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    template: dict[str, Any] = k8s["Deployment/hometier"]["spec"]["template"]
    return template


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (ct,) = pod["spec"]["containers"]
    return dict(ct)


# -- deploy/k8s ------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = load(path)
    assert docs, path
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_applies_everything_but_the_secret() -> None:
    (kust,) = load(DEPLOY / "k8s" / "kustomization.yaml")
    names = {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    assert sorted(kust["resources"]) == sorted(names)


def test_one_replica_on_sqlite_is_never_two(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["Deployment/hometier"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])


def test_service_and_probes_reach_the_container(
    k8s: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    svc = k8s["Service/hometier"]["spec"]
    assert selects(svc["selector"], pod["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = svc["ports"]
    assert port["port"] == ports[port["targetPort"]] == 8765
    assert container["args"] == ["serve", "--ip=0.0.0.0", "--port=8765"]
    env = {e["name"]: e for e in container["env"]}
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]["value"]
    assert prefix == "/services/hometier/"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports
        assert get["path"] == f"{prefix}health"
    # The init containers' default URL is this Service, port and prefix.
    url = urlsplit(DEFAULT_SERVICE_URL)
    assert (url.hostname, url.port) == (k8s["Service/hometier"]["metadata"]["name"], 8765)
    assert url.path + "/" == prefix


def test_secret_volumes_and_labels_are_wired(
    k8s: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    secret = k8s["Secret/hometier"]
    keys = set(secret["stringData"])
    assert {"HOMETIER_STORE", "HOMETIER_DB", "HOMETIER_HUB_TOKEN"} <= keys
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    env = {e["name"]: e for e in container["env"]}
    ref = env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "HOMETIER_HUB_TOKEN")
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    # Explicit env would override the Secret's: the Secret's essentials stay in the Secret.
    assert not {"HOMETIER_STORE", "HOMETIER_DB", "HOMETIER_HUB_TOKEN"} & set(env)

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert env["HOMETIER_HOMES"]["value"] == mounts["homes"]
    state_claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{state_claim}" in k8s
    db = secret["stringData"]["HOMETIER_DB"]
    assert db.startswith(f"sqlite:///{mounts['state']}/")
    # z2jh's hub NetworkPolicy admits only pods with this label.
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


def test_network_policy_admits_hub_proxy_and_user_pods(
    k8s: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    spec = k8s["NetworkPolicy/hometier"]["spec"]
    assert selects(spec["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    (rule,) = spec["ingress"]
    assert [p["port"] for p in rule["ports"]] == [container["ports"][0]["name"]]
    sources = {src["podSelector"]["matchLabels"]["component"] for src in rule["from"]}
    assert sources == {"proxy", "hub", "singleuser-server"}


# -- deploy/z2jh/values.yaml -----------------------------------------------------------


def test_values_register_the_service_at_the_service_address(
    values: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    service = values["hub"]["services"]["hometier"]
    assert service["url"] == "http://hometier:8765"
    # z2jh reads apiToken (camelCase) and passes the rest to JupyterHub as they are.
    placeholder = k8s["Secret/hometier"]["stringData"]["HOMETIER_HUB_TOKEN"]
    assert service["apiToken"] == placeholder
    # Without these the Hub gives a dashboard session no hometier scope: admins got 403.
    from hometier.hub.config import ALLOWED_SCOPES

    assert service["oauth_client_allowed_scopes"] == ALLOWED_SCOPES


def test_values_define_the_scopes_and_grant_what_configure_hub_grants(
    values: dict[str, Any],
) -> None:
    from hometier.hub.config import SERVICE_SCOPES, USER_SCOPES

    hub = values["hub"]
    assert hub["config"]["JupyterHub"]["custom_scopes"] == CUSTOM_SCOPES
    roles = hub["loadRoles"]
    assert roles["user"]["scopes"] == USER_SCOPES
    assert "self" in roles["user"]["scopes"]  # redefining `user` replaces the default
    assert "custom:hometier:restore!user" in roles["user"]["scopes"]
    assert roles["hometier-service"]["scopes"] == SERVICE_SCOPES
    assert roles["hometier-service"]["services"] == ["hometier"]
    for role in roles.values():
        for scope in role["scopes"]:
            if scope.startswith("custom:"):
                assert scope.split("!")[0] in CUSTOM_SCOPES, scope


def test_values_let_user_pods_reach_the_service(
    values: dict[str, Any], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    egress = values["singleuser"]["networkPolicy"]["egress"]
    kubernetes_validate.validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "singleuser"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
        },
        K8S_VERSION,
        strict=True,
    )
    (rule,) = egress
    (to,) = rule["to"]
    assert selects(to["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert [p["port"] for p in rule["ports"]] == [container["ports"][0]["containerPort"]]


def _z2jh_config(values: dict[str, Any]) -> Config:
    """``c`` as z2jh's own jupyterhub_config.py leaves it before extraConfig runs: the
    services of ``hub.services`` with ``apiToken`` renamed ``api_token``."""
    c = Config()
    services = []
    for name, spec in values["hub"]["services"].items():
        spec = dict(spec, name=name)
        if "apiToken" in spec:
            spec["api_token"] = spec.pop("apiToken")
        services.append(spec)
    c.JupyterHub.services = services
    return c


def _spawner(start_timeout: int, minted: list[dict[str, Any]]) -> Any:
    def new_api_token(**kwargs: Any) -> str:
        minted.append(kwargs)
        return "token"

    return SimpleNamespace(
        user=SimpleNamespace(name="alice", new_api_token=new_api_token),
        name="",
        init_containers=[],
        volume_mounts=[],
        start_timeout=start_timeout,
        log=SimpleNamespace(warning=lambda *a: pytest.fail(f"warned: {a}")),
    )


async def test_values_extra_config_installs_the_hook_as_the_hub_runs_it(
    values: dict[str, Any], container: dict[str, Any]
) -> None:
    from hometier.tickets import verify_ticket

    extra = values["hub"]["extraConfig"]
    assert sorted(extra)[-1] == "zz-hometier"  # z2jh runs extraConfig in key order
    c = _z2jh_config(values)
    exec(compile(extra["zz-hometier"], "extraConfig", "exec"), {"c": c})
    hook = c.KubeSpawner.pre_spawn_hook
    assert callable(hook)

    minted: list[dict[str, Any]] = []
    start_timeout = values["singleuser"]["startTimeout"]
    spawner = _spawner(start_timeout, minted)
    await hook(spawner)
    (init,) = spawner.init_containers
    assert init["name"] == INIT_CONTAINER_NAME
    assert init["image"] == container["image"]
    assert init["command"][-2:] == ["--service-url", DEFAULT_SERVICE_URL]
    # A restore ticket the service checks with its own token: no Hub token minted.
    assert minted == []
    (env,) = init["env"]
    assert env["name"] == TOKEN_ENV
    secret = values["hub"]["services"]["hometier"]["apiToken"]
    assert verify_ticket(secret, env["value"]) == "alice"
    assert verify_ticket("another-token", env["value"]) is None
    import time

    assert verify_ticket(secret, env["value"], now=time.time() + start_timeout - 1) == "alice"


async def test_without_the_service_token_the_hook_mints_a_hub_token(
    values: dict[str, Any],
) -> None:
    extra = values["hub"]["extraConfig"]
    c = Config()
    exec(compile(extra["zz-hometier"], "extraConfig", "exec"), {"c": c})
    minted: list[dict[str, Any]] = []
    start_timeout = values["singleuser"]["startTimeout"]
    spawner = _spawner(start_timeout, minted)
    await c.KubeSpawner.pre_spawn_hook(spawner)
    (init,) = spawner.init_containers
    assert init["env"] == [{"name": TOKEN_ENV, "value": "token"}]
    assert minted[0]["expires_in"] >= start_timeout > 300


# -- deploy/Dockerfile -----------------------------------------------------------------


def test_dockerfile_is_the_minimal_standard_one() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["hometier"]' in lines
    assert "EXPOSE 8765" in lines
    (user,) = [ln for ln in lines if ln.startswith("USER ")]
    uid = re.fullmatch(r"USER (\d+)(:\d+)?", user)
    assert uid and int(uid.group(1)) != 0  # numeric, so runAsNonRoot can check it
    assert any(ln.startswith("RUN pip install") for ln in lines)
    # Any uid must be able to enter the working directory (init containers run as 65534).
    (workdir,) = [ln.split()[1] for ln in lines if ln.startswith("WORKDIR ")][-1:]
    assert re.search(rf"install -d .*-m 0755 {re.escape(workdir)}$", text, re.M)
