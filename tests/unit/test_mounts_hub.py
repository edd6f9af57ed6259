"""The Hub side of bucket folders, without a Hub: ``configure_mounts`` (roles, scopes,
hooks chained after the operator's own) and DockerSpawner's volumes."""

from __future__ import annotations

from typing import Any

import pytest
from traitlets.config import Config

from hometier.hub.config import configure_hub
from hometier.hub.mounts import configure_mounts, make_volumes


def test_configure_mounts_grants_the_attach_scope_and_reading_groups_only():
    c = Config()
    configure_hub(c, service_url="http://127.0.0.1:8765/services/hometier", api_token="t")
    configure_mounts(c, service_url="http://127.0.0.1:8765/services/hometier")
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:hometier:attach!user" in roles["user"]["scopes"]
    assert "self" in roles["user"]["scopes"], "the Hub's own user role is kept"
    from hometier.hub.config import SERVICE_SCOPES

    # configure_hub's scopes are kept, and reading users' groups is added once.
    assert roles["hometier-service"]["scopes"] == [*SERVICE_SCOPES, "read:users:groups"]
    assert "custom:hometier:attach" in c.JupyterHub.custom_scopes
    assert "custom:hometier:admin" in c.JupyterHub.custom_scopes, "configure_hub's are kept"
    with pytest.raises(ValueError):
        configure_mounts(c, service_url="x", kind="kubernetes")


async def test_hooks_run_after_the_ones_already_configured():
    calls: list[str] = []
    c = Config()

    async def restore(spawner: Any) -> None:
        calls.append("restore")

    def stopped(spawner: Any) -> None:
        calls.append("operator's stop hook")

    c.Spawner.pre_spawn_hook = restore
    c.Spawner.post_stop_hook = stopped
    configure_mounts(c, service_url="http://127.0.0.1:9/services/hometier")

    class Log:
        def warning(self, *a: Any) -> None:
            calls.append("warned")

        info = warning

    class User:
        name = "alice"

        def new_api_token(self, **kw: Any) -> str:
            calls.append(f"token {kw['scopes']}")
            return "t"

    class Spawner:
        user, name, log = User(), "", Log()

    await c.Spawner.pre_spawn_hook(Spawner())
    await c.Spawner.post_stop_hook(Spawner())
    # Nothing answers on port 9: the spawn goes on without folders, and says so.
    assert calls == [
        "restore",
        "token ['custom:hometier:attach!user=alice']",
        "warned",
        "operator's stop hook",
        "token ['custom:hometier:attach!user=alice']",
        "warned",
    ]


def test_docker_volumes_are_read_only_where_the_user_may_only_read_and_rslave():
    attachments = [
        {
            "folder": "lab",
            "state": "attached",
            "target": "/m/servers/a/d/lab",
            "read_only": False,
            "mount_path": "buckets/lab",
        },
        {
            "folder": "course",
            "state": "attached",
            "target": "/m/servers/a/d/course",
            "read_only": True,
            "mount_path": "/data/course",
        },
        {"folder": "broken", "state": "failed", "error": "…"},
    ]
    assert make_volumes(attachments, "/home/jovyan") == {
        "/m/servers/a/d/lab": {"bind": "/home/jovyan/buckets/lab", "mode": "rw,rslave"},
        "/m/servers/a/d/course": {"bind": "/data/course", "mode": "ro,rslave"},
    }
