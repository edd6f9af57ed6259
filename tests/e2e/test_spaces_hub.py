"""Shared spaces with a real JupyterHub whose groups change through its REST API.

One Hub and one ``hometier serve`` (fixtures.service), the spaces root a bind mount,
system users who are also the Hub's users, and probes running as them (kept running:
no restart). The service follows the Hub's groups with its reconcile loop every second
(``HOMETIER_SPACES_SYNC_INTERVAL=1``); the Hub's spawns go through
``hometier.hub.spaces.configure_spaces`` (links in ``~/shared``).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fixtures.servers import ServerUnavailable
from fixtures.service import Service, start_hub_with_service
from fixtures.spaces import PartsMissing, Probe, SysUsers, bind_root, check_parts, unbind

pytestmark = [pytest.mark.hub, pytest.mark.slow, pytest.mark.root]

EXTRA = """
from hometier.hub.spaces import configure_spaces
_url = [s for s in c.JupyterHub.services if s["name"] == "hometier"][0]["url"]
configure_spaces(c, service_url=_url + "/services/hometier")
"""


class World:
    def __init__(self, svc: Service, users: SysUsers, root: Path) -> None:
        self.svc, self.users, self.root = svc, users, root
        self.tokens: dict[str, str] = {}
        self.probes: list[Probe] = []

    def name(self, short: str) -> str:
        return self.users.names[short]

    def token(self, short: str) -> str:
        if short not in self.tokens:
            self.tokens[short] = self.svc.user_token(self.name(short) if short != "ops" else "ops")
        return self.tokens[short]

    def call(self, short: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.svc.call(method, path, self.token(short), body)

    def probe(self, short: str) -> Probe:
        p = Probe(self.name(short))
        self.probes.append(p)
        return p


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    try:
        check_parts()
    except PartsMissing as exc:
        pytest.skip(str(exc))
    from fixtures.spaces import make_world_dir

    base = make_world_dir()
    root = base / "spaces"
    bind_root(root)
    users = SysUsers(base / "homes")
    saved = {
        k: os.environ.get(k)
        for k in ("HOMETIER_SPACES", "HOMETIER_SPACES_SYNC_INTERVAL", "HOMETIER_SECRET_STORE")
    }
    os.environ.update(
        HOMETIER_SPACES=str(root),
        HOMETIER_SPACES_SYNC_INTERVAL="1",
        HOMETIER_SECRET_STORE=f"file://{base / 'secret-repos'}",
    )
    svc = None
    try:
        for short in ("own", "wri", "rea", "non"):
            users.add(short)
        try:
            svc = start_hub_with_service(base, extra_config=EXTRA)
        except ServerUnavailable as exc:
            pytest.skip(str(exc))
        svc.hub.create_users("ops", *users.names.values())
        w = World(svc, users, root)
        yield w
        for p in w.probes:
            p.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if svc is not None:
            svc.close()
        unbind(root)
        users.close()
        shutil.rmtree(base, ignore_errors=True)


def wait_for(what: str, check: Any, timeout: float = 20.0) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


def test_groups_drive_access_and_secret_names_stay_hidden(world: World) -> None:
    w = world
    group = f"g{w.users.tag}"
    w.svc.hub.request("POST", f"/groups/{group}", {"users": [w.name("rea")]})
    status, doc = w.call(
        "ops",
        "POST",
        "/api/spaces",
        {
            "name": f"lab{w.users.tag}",
            "level": "private",
            "owner": w.name("own"),
            "members": {"writers": {"users": [w.name("wri")]}, "readers": {"groups": [group]}},
        },
    )
    assert status == 201, doc
    lab = doc["name"]
    status, doc = w.call(
        "ops",
        "POST",
        "/api/spaces",
        {"name": f"hush{w.users.tag}", "level": "secret", "owner": w.name("own")},
    )
    assert status == 201, doc
    hush = doc["name"]
    top = w.root / lab
    wri, rea, non = w.probe("wri"), w.probe("rea"), w.probe("non")
    assert wri.try_("create", top / "results.csv") == "ok"
    assert rea.try_("read", top / "results.csv") == "ok"
    assert rea.try_("write", top / "results.csv") == "EACCES"
    assert non.try_("read", top / "results.csv") == "EACCES"

    # A secret space's name: in no answer to a non-member, whatever the route and method.
    def nowhere(short: str) -> None:
        status, listing = w.call(short, "GET", "/api/spaces")
        assert status == 200 and hush not in str(listing)
        assert lab in str(listing)
        status, mounts = w.call(short, "GET", f"/api/homes/{quote(w.name(short))}/spaces")
        assert status == 200 and hush not in str(mounts)
        unknown = f"nosuch{w.users.tag}"
        for method, tail, body in (
            ("GET", "", None),
            ("PATCH", "", {"description": "x"}),
            ("DELETE", "", None),
            ("GET", "/members", None),
            ("PUT", "/members", {"members": []}),
            ("GET", "/snapshots", None),
            ("POST", "/restore", None),
            ("POST", "/archive", None),
            ("GET", "/events", None),
        ):
            got = w.call(short, method, f"/api/spaces/{hush}{tail}", body)
            ref = w.call(short, method, f"/api/spaces/{unknown}{tail}", body)
            assert got[0] == ref[0] == 404, (method, tail, got, ref)
            assert str(got[1]).replace(hush, "N") == str(ref[1]).replace(unknown, "N")
        status, page = w.svc.call("GET", "/spaces", w.token(short), raw=True)
        assert status == 200 and hush.encode() not in page and lab.encode() in page

    nowhere("non")
    nowhere("rea")
    status, doc = w.call("own", "GET", f"/api/spaces/{hush}")
    assert status == 200 and doc["role"] == "writer"

    # The Hub's group changes; the same running processes follow, no restart.
    w.svc.hub.request("DELETE", f"/groups/{group}/users", {"users": [w.name("rea")]})
    lost = wait_for(
        "the removed member loses access", lambda: rea.try_("read", top / "results.csv") == "EACCES"
    )
    w.svc.hub.request("POST", f"/groups/{group}/users", {"users": [w.name("non")]})
    gained = wait_for(
        "the added member gains access", lambda: non.try_("read", top / "results.csv") == "ok"
    )
    assert non.try_("write", top / "results.csv") == "EACCES"
    print(
        f"\naccess followed the Hub's groups in {lost:.1f} s (removal), {gained:.1f} s (addition)"
    )
    status, log = w.call("own", "GET", f"/api/spaces/{lab}/events")
    kinds = {(e["kind"], e["user"]) for e in log["events"]}
    assert ("space.revoke", w.name("rea")) in kinds and ("space.grant", w.name("non")) in kinds

    # A secret space's snapshot: members read it, and the reading is in the log; hometier's
    # admin (not a member) sees the space's settings but not its contents.
    own = w.probe("own")
    assert own.try_("create", w.root / ".secret" / "x") == "EACCES"
    status, doc = w.call("ops", "GET", f"/api/spaces/{hush}")
    assert status == 200 and doc["level"] == "secret"
    path = w.root / ".secret"
    key_dirs = os.listdir(path)
    assert len(key_dirs) == 1
    assert own.try_("create", path / key_dirs[0] / "plan.txt") == "ok"
    status, done = w.call("own", "POST", f"/api/spaces/{hush}/archive")
    assert status == 200 and done["outcome"] == "archived", done
    snap = done["snapshot"]
    status, tree = w.call("own", "GET", f"/api/spaces/{hush}/snapshots/{snap}/tree")
    assert status == 200 and [e["name"] for e in tree["entries"]] == ["plan.txt"]
    assert w.call("ops", "GET", f"/api/spaces/{hush}/snapshots/{snap}/tree")[0] == 404
    status, log = w.call("own", "GET", f"/api/spaces/{hush}/events")
    assert ("space.snapshot_read", w.name("own")) in {(e["kind"], e["user"]) for e in log["events"]}

    # Spawning: the archived secret space comes back, links appear in ~/shared, as the user.
    w.svc.hub.start_server(w.name("own"))
    shared = w.svc.homes / w.name("own") / "shared"
    st = shared.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == w.users.uid("own")
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert os.readlink(shared / hush) == str(path / key_dirs[0])
    assert os.readlink(shared / lab) == str(top)
    assert own.try_("read", shared / hush / "plan.txt") == "ok"
    w.svc.hub.stop_server(w.name("own"))
