"""``configure_hub`` as a Hub config calls it: the managed service gets everything it
needs from the Hub (nothing to copy by hand), the external one is only registered, and
the service fills in what an external service's environment lacks."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from hometier.hub.config import ALLOWED_SCOPES, _service_url_of, configure_hub
from hometier.service.auth import hub_auth_defaults


def test_the_default_is_a_managed_service_with_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("HOMETIER_STORE", "s3://bucket/x")
    monkeypatch.setenv("UNRELATED", "1")
    c = Config()
    c.Spawner.pre_spawn_hook = "earlier"
    token = configure_hub(c, homes="/srv/homes", db="sqlite:////var/lib/h.db", admin_users=["ops"])
    (service,) = c.JupyterHub.services
    assert re.fullmatch(r"[0-9a-f]{64}", token) and service["api_token"] == token
    assert service["command"][:3] == [sys.executable, "-m", "hometier.cli.main"]
    assert service["command"][-4:] == ["--ip", "127.0.0.1", "--port", "8765"]
    assert service["url"] == "http://127.0.0.1:8765"
    env = service["environment"]
    assert env["HOMETIER_HOMES"] == "/srv/homes" and env["HOMETIER_DB"] == "sqlite:////var/lib/h.db"
    assert env["HOMETIER_STORE"] == "s3://bucket/x" and env["AWS_ACCESS_KEY_ID"] == "AKIA"
    assert "UNRELATED" not in env
    assert service["oauth_client_allowed_scopes"] == ALLOWED_SCOPES
    assert callable(c.Spawner.pre_spawn_hook)
    # A second call (a reload) replaces, never duplicates.
    configure_hub(c)
    assert [s["name"] for s in c.JupyterHub.services] == ["hometier"]


def test_an_external_service_is_only_registered() -> None:
    c = Config()
    token = configure_hub(
        c, service_url="http://10.0.0.5:8765/services/hometier", api_token="t" * 64
    )
    (service,) = c.JupyterHub.services
    assert token == "t" * 64
    assert service["url"] == "http://10.0.0.5:8765" and "command" not in service


@pytest.mark.parametrize(
    ("hub_base", "url"),
    [
        ("/hub/", "http://127.0.0.1:8765/services/hometier"),
        ("/jupyter/hub/", "http://127.0.0.1:8765/jupyter/services/hometier"),
    ],
)
def test_the_managed_services_url_follows_the_hubs_base_url(hub_base: str, url: str) -> None:
    assert _service_url_of(SimpleNamespace(hub=SimpleNamespace(base_url=hub_base)), 8765) == url


def test_an_external_service_fills_in_what_its_environment_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_API_URL",
        "JUPYTERHUB_CLIENT_ID",
        "JUPYTERHUB_SERVICE_PREFIX",
        "JUPYTERHUB_SERVICE_NAME",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
        "JUPYTERHUB_OAUTH_SCOPES",
    ):
        monkeypatch.delenv(name, raising=False)
    kw = hub_auth_defaults("/services/hometier", "http://hub:8081/hub/api", "secret")
    assert kw == {
        "api_token": "secret",
        "api_url": "http://hub:8081/hub/api",
        "oauth_client_id": "service-hometier",
        "base_url": "/services/hometier/",
        "access_scopes": {"access:services!service=hometier"},
    }
    # What the Hub gave (a managed service) is never overridden.
    monkeypatch.setenv("JUPYTERHUB_CLIENT_ID", "service-other")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "other")
    assert "oauth_client_id" not in hub_auth_defaults("/x", "", "")
    assert "access_scopes" not in hub_auth_defaults("/x", "", "")
