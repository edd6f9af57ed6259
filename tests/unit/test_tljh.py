"""The TLJH plugin, loaded by pluggy the way TLJH's installer loads plugins.

The Littlest JupyterHub itself is an installer for a whole machine (systemd, a conda
environment under /opt/tljh): it cannot run in this test. The hook specification below
mirrors the two hooks of tljh/hooks.py that the plugin implements; everything else (the
plugin, configure_hub, the traitlets config) is real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
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


def test_asks_pip_for_nothing_that_is_not_on_an_index() -> None:
    # hometier is not on PyPI: `--plugin` installs it (from a wheel or a git URL); a
    # package name here would make TLJH's installer fail on every upgrade.
    assert manager().hook.tljh_extra_hub_pip_packages() == [[]]


def test_configures_a_managed_service_and_the_spawn_hook(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tljh, "STATE", tmp_path)
    monkeypatch.setattr(tljh, "ENV_FILE", tmp_path / "hometier.env")
    (tmp_path / "hometier.env").write_text(
        "# bucket\nHOMETIER_STORE=s3://bucket/hometier\nAWS_ACCESS_KEY_ID='AKIA'\nIGNORED=1\n"
    )
    monkeypatch.delenv("HOMETIER_STORE", raising=False)
    c = Config()
    c.Spawner.pre_spawn_hook = "earlier"
    c.Authenticator.admin_users = {"ada"}
    manager().hook.tljh_custom_jupyterhub_config(c=c)

    (service,) = c.JupyterHub.services
    assert service["name"] == "hometier"
    assert service["url"] == "http://127.0.0.1:8765"
    # A token the plugin makes, so that the spawn hook can sign restore tickets with it.
    assert re.fullmatch(r"[0-9a-f]{64}", service["api_token"])
    assert service["command"][:3] == [sys.executable, "-m", "hometier.cli.main"]
    assert service["environment"]["HOMETIER_STORE"] == "s3://bucket/hometier"
    assert service["environment"]["AWS_ACCESS_KEY_ID"] == "AKIA"
    assert "IGNORED" not in service["environment"]
    assert service["environment"]["HOMETIER_HOMES"] == "/home"
    assert set(service["oauth_client_allowed_scopes"]) >= {"custom:hometier:admin"}
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
    # Admins: TLJH's own, and a group that exists because the plugin creates it.
    assert roles["hometier-admin"]["users"] == ["ada"]
    assert roles["hometier-admin"]["groups"] == ["hometier-admins"]
    assert c.JupyterHub.load_groups["hometier-admins"] == {"users": []}
    assert "custom:hometier:admin" in c.JupyterHub.custom_scopes
    assert callable(c.Spawner.pre_spawn_hook)


def test_the_check_it_command_reads_the_services_database(tmp_path: Path, monkeypatch) -> None:
    """`hometier --config /opt/tljh/state/hometier_config.py status`, run by hand (no
    JUPYTERHUB_* variables), reads the service's database, not ./.hometier."""
    monkeypatch.setattr(tljh, "STATE", tmp_path / "state")
    monkeypatch.setattr(tljh, "ENV_FILE", tmp_path / "state" / "hometier.env")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "hometier.env").write_text(f"HOMETIER_STORE=file://{tmp_path}/bucket\n")
    c = Config()
    manager().hook.tljh_custom_jupyterhub_config(c=c)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "HOMETIER_"))}
    config = str(tmp_path / "state" / "hometier_config.py")
    r = subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", "--config", config, "status", "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # /home is this machine's: status registers nothing, it only reads the database.
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    assert (tmp_path / "state" / "hometier.sqlite").is_file()
    assert not (cwd / ".hometier").exists()
