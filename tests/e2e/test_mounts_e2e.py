"""Bucket folders end to end: a real JupyterHub (SimpleLocalProcessSpawner, as root) with
``configure_hub`` and ``configure_mounts``, a real ``hometier serve`` mounting with s3fs,
SeaweedFS as the bucket.

An admin registers folders through the API (credentials go in and never come back); a
user sees and browses (through the object-store API) only the folders their groups may
use; spawning their server binds the folder inside their home before the server starts,
the server's own contents API writes into it and the file lands in the bucket; stopping
the server releases it (``post_stop_hook``). The dashboard page lists what each caller
may see. The finalizer stops the service and the Hub, then lazily unmounts whatever is
left under the test's folder and stops the s3fs daemons by the PIDs the database holds.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from e2e.conftest_service import start_service, wait_ready
from e2e.dashboard_fixtures import browser_fixture  # noqa: F401 - the `browser` fixture
from fixtures.servers import S3Server
from fixtures.service import PREFIX, Service
from hometier.mounts.client import stop_pid
from hometier.mounts.mountinfo import MountTable
from hometier.mounts.syscalls import umount

pytestmark = [pytest.mark.hub, pytest.mark.slow, pytest.mark.root]

HUB_CONFIG = """
from hometier.hub.mounts import configure_mounts
# SimpleLocalProcessSpawner runs every server as the Hub's own user (root here).
configure_mounts(c, service_url=HOMETIER_URL, kind="local", uid=0, gid=0)
c.JupyterHub.load_groups = {"staff": {"users": ["alice"]}, "students": {"users": ["bob"]}}
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""


@pytest.fixture(scope="module")
def svc(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if not os.path.exists("/dev/fuse") or shutil.which("s3fs") is None:
        pytest.skip("needs /dev/fuse and s3fs (apt-get install s3fs; scripts/test does)")
    root = tmp_path_factory.mktemp("mounts-e2e")
    env = {
        "HOMETIER_SECRET_KEY": Fernet.generate_key().decode(),
        "HOMETIER_MOUNTS_ROOT": str(root / "mnt"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        service = start_service(root, extra_config=HUB_CONFIG)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield service
    finally:
        service.close()
        pids = []
        with sqlite3.connect(root / "state.db") as db:
            pids = [pid for (pid,) in db.execute("SELECT pid FROM host_mounts") if pid]
        for _ in range(100):
            left = MountTable.read().under(root)
            if not left:
                break
            umount(max(left, key=lambda e: e.mount_id).mount_point, detach=True)
        for pid in pids:
            stop_pid(pid, grace=2.0)


def call(svc: Service, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    return svc.call(method, path, token, body)


def page(svc: Service, path: str, token: str) -> tuple[int, str]:
    req = urllib.request.Request(f"{svc.url}{path}", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_register_browse_spawn_write_stop(svc: Service, s3_server: S3Server) -> None:
    hub = svc.hub
    hub.create_users("alice", "bob", "ops")
    ops, alice, bob = (svc.user_token(u) for u in ("ops", "alice", "bob"))
    secret = s3_server.secret_key
    lab = {
        "name": "lab",
        "bucket": s3_server.bucket,
        "endpoint": s3_server.endpoint,
        "prefix": "e2e-lab",
        "credentials": {"access_key_id": s3_server.access_key, "secret_access_key": secret},
        "access": ["group:staff:rw", "group:students:ro"],
        "description": "the lab's data",
    }
    status, doc = call(svc, "POST", "/api/bucket-folders", alice, lab)
    assert status == 403, doc
    status, doc = call(svc, "POST", "/api/bucket-folders", ops, lab)
    assert status == 201, doc
    assert doc["credentials"] == "sealed" and secret not in json.dumps(doc)
    status, doc = call(svc, "POST", "/api/bucket-folders", ops, {**lab, "name": "Bad/Name"})
    assert status == 400 and doc["kind"] == "InvalidFolder"
    private = {**lab, "name": "private", "prefix": "e2e-private", "access": ["user:ops:rw"]}
    assert call(svc, "POST", "/api/bucket-folders", ops, private)[0] == 201

    # Who sees what: groups come from the Hub, never from the caller.
    assert call(svc, "GET", "/api/bucket-folders", alice)[1]["folders"] == [
        {
            "name": "lab",
            "description": "the lab's data",
            "mount_path": "buckets/lab",
            "read_only": False,
            "mode": "rw",
        }
    ]
    assert [f["mode"] for f in call(svc, "GET", "/api/bucket-folders", bob)[1]["folders"]] == ["ro"]
    assert call(svc, "GET", "/api/bucket-folders/private", alice)[0] == 404
    assert call(svc, "GET", "/api/bucket-folders/private/tree", alice)[0] == 404

    # Browsing and downloading go through the object store, with nothing mounted.
    from hometier.mounts.objects import FolderObjects
    from hometier.mounts.spec import Credentials, FolderSpec

    objects = FolderObjects(
        FolderSpec.from_doc({k: v for k, v in lab.items() if k != "credentials"}),
        Credentials(s3_server.access_key, secret),
    )
    objects.put("results/run1.csv", b"a,b\n1,2\n")
    status, tree = call(svc, "GET", "/api/bucket-folders/lab/tree", bob)
    assert status == 200 and tree["entries"] == [
        {"name": "results", "type": "dir", "size": 0, "modified": None}
    ]
    status, raw = svc.call(
        "GET", "/api/bucket-folders/lab/file?path=results/run1.csv", bob, raw=True
    )
    assert (status, raw) == (200, b"a,b\n1,2\n")
    assert call(svc, "GET", "/api/bucket-folders/lab/file?path=../x", bob)[0] == 400
    assert MountTable.read().under(svc.root / "mnt" / "fs") == []

    # Spawn: the folder is in the home before the server starts; the server writes to it.
    hub.request("POST", "/users/alice/server", expect=(201, 202))
    assert wait_ready(hub, "alice") is not None, "alice's server did not start"
    target = svc.homes / "alice" / "buckets" / "lab"
    assert MountTable.read().top(target) is not None
    assert (target / "results" / "run1.csv").read_bytes() == b"a,b\n1,2\n"
    server_token = hub.request(
        "POST", "/users/alice/tokens", {"scopes": ["access:servers!user=alice"]}
    )[1]["token"]
    req = urllib.request.Request(
        f"{hub.url}/user/alice/api/contents/buckets/lab/from-server.txt",
        data=json.dumps({"type": "file", "format": "text", "content": "hello"}).encode(),
        method="PUT",
        headers={"Authorization": f"token {server_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 201)
    assert objects.get("from-server.txt") == b"hello"
    status, mine = call(svc, "GET", "/api/users/alice/mounts", alice)
    assert [(a["folder"], a["state"], a["read_only"]) for a in mine["attachments"]] == [
        ("lab", "attached", False)
    ]
    assert call(svc, "GET", "/api/users/alice/mounts", bob)[0] == 403
    status, doc = call(svc, "DELETE", "/api/bucket-folders/lab", ops)
    assert (status, doc["kind"]) == (409, "FolderInUse")

    # The dashboard shows each caller their own view.
    status, html = page(svc, "/bucket-folders", alice)
    assert status == 200 and "lab" in html and "private" not in html and "Register" not in html
    status, html = page(svc, "/bucket-folders", ops)
    assert status == 200 and "Register a bucket folder" in html and "private" in html
    assert secret not in html
    status, html = page(svc, "/bucket-folders/lab/browse?path=results", bob)
    assert status == 200 and "run1.csv" in html

    # Stop: post_stop_hook releases; the bind is gone, the mount waits for its delay.
    hub.request("DELETE", "/users/alice/server", expect=(202, 204))
    deadline_ok = _wait(
        lambda: call(svc, "GET", "/api/users/alice/mounts", alice)[1]["attachments"] == []
    )
    assert deadline_ok, "the server's folders were not released at stop"
    assert MountTable.read().top(target) is None
    status, mounts = call(svc, "GET", "/api/mounts", ops)
    assert [(m["folder"], m["refs"]) for m in mounts["mounts"]] == [("lab", 0)]
    assert call(svc, "GET", "/api/mounts", alice)[0] == 403
    # An idle folder can go; the check loop then unmounts what no row accounts for.
    assert call(svc, "DELETE", "/api/bucket-folders/lab", ops)[0] == 204
    status, report = call(svc, "POST", "/api/mounts/check", ops)
    assert status == 200 and report["errors"] == [], report
    assert [e for e in MountTable.read().under(svc.root / "mnt") if e.is_fuse] == []


def _wait(pred: Any, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_an_admin_registers_a_folder_in_the_browser_and_a_user_browses_it(
    svc: Service, s3_server: S3Server, browser: Any
) -> None:
    """The dashboard page in headless Chromium: the admin's form (with the Hub's XSRF
    token) registers a folder whose secret never shows again; a user browses it and
    downloads a file."""
    from hometier.mounts.objects import FolderObjects
    from hometier.mounts.spec import Credentials, FolderSpec

    svc.hub.create_users("ops", "alice")
    base = f"{svc.hub.url.rstrip('/')}{PREFIX}"
    secret = s3_server.secret_key

    def login(user: str) -> Any:
        context = browser.new_context(accept_downloads=True)
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(f"{base}/")
        page.wait_for_selector("#username_input")
        page.fill("#username_input", user)
        page.fill("#password_input", "any password")
        page.click("#login_submit")
        page.wait_for_url(f"{base}/")
        return page

    page = login("ops")
    page.click("text=Bucket folders")
    page.wait_for_selector("#register-folder")
    form = {
        "name": "shared",
        "endpoint": s3_server.endpoint,
        "bucket": s3_server.bucket,
        "prefix": "e2e-shared",
        "access_key_id": s3_server.access_key,
        "secret_access_key": secret,
        "access": "group:staff:ro",
    }
    for name, value in form.items():
        page.fill(f"#register-folder [name={name}]", value)
    page.click("#register-folder button[type=submit]")
    page.wait_for_selector(".flash")
    assert "Bucket folder shared registered." in page.inner_text(".flash")
    assert page.locator("#folders tr[data-name=shared]").count() == 1
    assert secret not in page.content()

    FolderObjects(
        FolderSpec(
            name="shared", bucket=s3_server.bucket, endpoint=s3_server.endpoint, prefix="e2e-shared"
        ),
        Credentials(s3_server.access_key, secret),
    ).put("readme.md", b"# shared\n")
    user = login("alice")
    user.goto(f"{base}/bucket-folders")
    user.click("#folders tr[data-name=shared] a")
    user.wait_for_selector("#entries")
    assert user.locator("#entries tr[data-name='readme.md']").count() == 1
    assert user.locator("#register-folder").count() == 0, "the form is for admins"
    with user.expect_download() as download:
        user.click("#entries a.file")
    assert Path(download.value.path()).read_bytes() == b"# shared\n"
