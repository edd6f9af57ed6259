"""The TLJH plugin, loaded by pluggy the way TLJH's installer loads plugins.

The Littlest JupyterHub itself is an installer for a whole machine (systemd, a conda
environment under /opt/tljh): it cannot run in this test. The hook specification below
mirrors the two hooks of tljh/hooks.py that the plugin implements; everything else (the
plugin, configure_hub, the traitlets config) is real.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pluggy
from traitlets.config import Config

from hometier.hub import tljh

spec = pluggy.HookspecMarker("tljh")


class TLJHSpecs:
    @spec
    def tljh_extra_hub_pip_packages(self) -> list[str]:  # type: ignore[empty-body]
        ...

    @spec
    def tljh_custom_jupyterhub_config(self, c: Config) -> None: ...


def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("tljh")
    pm.add_hookspecs(TLJHSpecs)
    pm.register(tljh)
    return pm


def test_asks_for_hometier_in_the_hub_environment() -> None:
    assert manager().hook.tljh_extra_hub_pip_packages() == [["hometier[tljh]"]]


def test_configures_a_managed_service_and_the_spawn_hook(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tljh, "STATE", tmp_path)
    monkeypatch.setattr(tljh, "ENV_FILE", tmp_path / "hometier.env")
    (tmp_path / "hometier.env").write_text(
        "# bucket\nHOMETIER_STORE=s3://bucket/hometier\nAWS_ACCESS_KEY_ID='AKIA'\nIGNORED=1\n"
    )
    monkeypatch.delenv("HOMETIER_STORE", raising=False)
    c = Config()
    c.Spawner.pre_spawn_hook = "earlier"
    manager().hook.tljh_custom_jupyterhub_config(c=c)

    (service,) = c.JupyterHub.services
    assert service["name"] == "hometier"
    assert service["url"] == "http://127.0.0.1:8765"
    assert "api_token" not in service  # the Hub makes one for a managed service
    assert service["command"][:3] == [sys.executable, "-m", "hometier.cli.main"]
    assert service["environment"]["HOMETIER_STORE"] == "s3://bucket/hometier"
    assert service["environment"]["AWS_ACCESS_KEY_ID"] == "AKIA"
    assert "IGNORED" not in service["environment"]
    assert service["environment"]["HOMETIER_HOMES"] == "/home"
    written = (tmp_path / "hometier_config.py").read_text()
    assert 'home_template = "jupyter-{username}"' in written
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:hometier:restore!user" in roles["user"]["scopes"]
    assert roles["hometier-service"]["scopes"] == [
        "list:users",
        "read:users:activity",
        "read:servers",
        "list:groups",
        "read:groups",
        "tokens",
    ]
    assert roles["hometier-admin"]["groups"] == ["admin"]
    assert "custom:hometier:admin" in c.JupyterHub.custom_scopes
    assert callable(c.Spawner.pre_spawn_hook)
