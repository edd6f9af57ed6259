"""The API as its users use it, against a real JupyterHub and ``hometier serve``.

A user sees the state of their home, gets their files back (by asking, or by taking a
lease), follows the restore as it runs, and browses and downloads their snapshots:
"a user can recover an old version of their own notebook". Whatever a client sends (odd
paths, broken bodies, names that are not users), the answer is a 4xx, never a 5xx and
never a byte from outside the home's snapshot.

Homes (``e2e.svc_fixtures``): alice archived; bob active with two snapshots, his
notebook edited in between; both hold a lease taken by the CLI. Tests that need alice
archived archive her again (``Api.ensure_archived``), so they run in any order.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import re
import socket
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.svc_fixtures import (
    NESTED,
    NOTEBOOK,
    ODD_DIR,
    ODD_FILE,
    Api,
    Link,
    api_fixture,  # noqa: F401 - the `api` fixture
    b64,
    path_query,
    read_tree,
    run_cli,
)
from fixtures.service import PREFIX

pytestmark = [pytest.mark.hub, pytest.mark.slow]

PASSWD_MARK = b"root:x:0:0"


def snap_url(user: str, ref: str, kind: str, query: str = "") -> str:
    return f"/api/homes/{user}/snapshots/{ref}/{kind}" + (f"?{query}" if query else "")


# --- service basics ------------------------------------------------------------------


def test_health_needs_no_token(api: Api) -> None:
    ok = {"status": "ok", "database": "ok", "store": "ok"}
    assert api.call("GET", "/health", None) == (200, ok)


def structural_errors(doc: dict[str, Any]) -> list[str]:
    """What an OpenAPI 3.1 validator would say about the parts this API uses."""
    errors = [f"no {key}" for key in ("openapi", "info", "paths") if key not in doc]
    errors += [f"info has no {key}" for key in ("title", "version") if key not in doc["info"]]
    schemes = doc.get("components", {}).get("securitySchemes", {})
    for path, ops in doc["paths"].items():
        wanted = set(re.findall(r"{([^}]+)}", path))
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if method not in {"get", "put", "post", "delete", "patch", "head", "options"}:
                errors.append(f"{where}: not an HTTP method")
            if not op.get("responses"):
                errors.append(f"{where}: no responses")
            for code, resp in op.get("responses", {}).items():
                if not re.fullmatch(r"[1-5](\d\d|XX)|default", code) or "description" not in resp:
                    errors.append(f"{where}: response {code}")
            params = op.get("parameters", [])
            for prm in params:
                if prm.get("in") not in ("path", "query", "header", "cookie") or not prm.get(
                    "name"
                ):
                    errors.append(f"{where}: parameter {prm}")
                if "schema" not in prm and "content" not in prm:
                    errors.append(f"{where}: parameter {prm.get('name')} has no schema")
                if prm.get("in") == "path" and prm.get("required") is not True:
                    errors.append(f"{where}: path parameter {prm['name']} not required")
            declared = {p["name"] for p in params if p.get("in") == "path"}
            if declared != wanted:
                errors.append(f"{where}: path parameters {declared} != {wanted}")
            for req in op.get("security", []):
                errors += [f"{where}: unknown security {n}" for n in req if n not in schemes]
    for ref in re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc)):
        node: Any = doc
        for part in ref.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            errors.append(f"unresolved $ref #/{ref}")
    return errors


def test_openapi_is_valid_openapi_3_1_and_lists_every_route(api: Api) -> None:
    status, doc = api.call("GET", "/api/openapi.json", None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert structural_errors(doc) == []
    try:
        from openapi_spec_validator import OpenAPIV31SpecValidator
    except ImportError:  # the structural checks above stand in for it
        pass
    else:
        assert [e.message for e in OpenAPIV31SpecValidator(doc).iter_errors()] == []
    expected = {
        "/health": {"get"},
        "/metrics": {"get"},
        "/api/homes": {"get"},
        "/api/homes/{user}": {"get"},
        "/api/homes/{user}/restore": {"get", "post"},
        "/api/homes/{user}/restore/events": {"get"},
        "/api/homes/{user}/restored": {"post"},
        "/api/homes/{user}/leases": {"get", "post"},
        "/api/homes/{user}/leases/{lease}": {"put", "delete"},
        "/api/homes/{user}/archive": {"post"},
        "/api/homes/{user}/exempt": {"put", "delete"},
        "/api/homes/{user}/snapshots": {"get"},
        "/api/homes/{user}/snapshots/{snapshot}/tree": {"get"},
        "/api/homes/{user}/snapshots/{snapshot}/file": {"get"},
        "/api/homes/{user}/snapshots/{snapshot}/archive": {"get"},
        "/api/jobs": {"get", "post"},
        "/api/jobs/pause-all": {"post"},
        "/api/jobs/{job}": {"get", "patch", "delete"},
        "/api/jobs/{job}/run": {"post"},
        "/api/jobs/{job}/pause": {"post"},
        "/api/jobs/{job}/resume": {"post"},
        "/api/jobs/{job}/runs": {"get"},
        "/api/jobs/{job}/runs/{run}": {"get"},
        "/api/jobs/{job}/runs/{run}/cancel": {"post"},
        "/api/secrets": {"get"},
        "/api/secrets/{name}": {"put", "delete"},
    }
    assert {p: set(ops) for p, ops in doc["paths"].items()} == expected
    assert doc["servers"] == [{"url": PREFIX}]


# --- the state of a home -------------------------------------------------------------


def test_a_user_sees_the_state_of_their_home(api: Api) -> None:
    api.ensure_archived("alice")
    status, mine = api.call("GET", "/api/homes/alice", api.tokens["alice"])
    assert status == 200, mine
    assert mine["user"] == "alice" and mine["state"] == "archived"
    assert mine["archived_at"] and mine["hot_bytes"] > 0
    # What a snapshot added to the bucket would let a user probe for other users' files
    # (deduplication): only admins see it.
    assert "stored_bytes" not in mine
    admin_view = api.home("alice")
    assert admin_view.pop("stored_bytes") > 0
    assert mine == admin_view  # what the admin sees, less the stored bytes
    status, bob = api.call("GET", "/api/homes/bob", api.tokens["bob"])
    assert status == 200 and bob["state"] == "active", bob
    assert api.fixture_leases["bob"] in {le["id"] for le in bob["leases"]}
    db = api.status("bob")
    assert (bob["state"], bob["hot_bytes"], bob["exempt"]) == (
        db["state"],
        db["hot_bytes"],
        db["exempt"],
    )


def test_unknown_user_is_404(api: Api) -> None:
    ops = api.tokens["ops"]
    for method, path in [
        ("GET", "/api/homes/nobody-here"),
        ("POST", "/api/homes/nobody-here/restore"),
        ("POST", "/api/homes/nobody-here/leases"),
    ]:
        status, doc = api.call(method, path, ops)
        assert status == 404, (method, path, doc)
        assert "nobody-here" in doc["error"]
    assert "nobody-here" not in {h["user"] for h in api.ok("GET", "/api/homes")["homes"]}


@pytest.mark.parametrize(
    "user", ["..", "%2e%2e", ".", ".hidden", "a%5Cb", "a%00b", "%ff", "x" * 300, "%E2%80%A8"]
)
def test_invalid_user_names_are_400(api: Api, user: str) -> None:
    ops = api.tokens["ops"]
    for method, path in [
        ("GET", f"/api/homes/{user}"),
        ("POST", f"/api/homes/{user}/restore"),
        ("GET", f"/api/homes/{user}/snapshots"),
        ("PUT", f"/api/homes/{user}/exempt"),
        ("POST", f"/api/homes/{user}/leases"),
    ]:
        status, _, body = api.fetch(method, path, ops, b"{}" if method != "GET" else None)
        # "." and ".." may also be resolved away by the router: then no such endpoint.
        assert status in (400, 404), (method, path, status, body[:200])
        assert json.loads(body)["error"]


# --- restore -------------------------------------------------------------------------


def test_restore_is_idempotent_and_brings_back_identical_files(api: Api) -> None:
    api.ensure_archived("alice")
    token = api.tokens["alice"]
    since = len(api.events("alice"))
    answers: list[tuple[int, Any]] = []

    def post() -> None:
        answers.append(api.call("POST", "/api/homes/alice/restore", token))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in answers] == [202, 202], answers
    docs = [d for _, d in answers]
    assert sum(not d["joined"] for d in docs) >= 1, docs
    events = api.sse("alice", token)
    assert events, "the stream sent nothing"
    assert all(name == "progress" for name, _ in events)
    assert events[-1][1]["state"] == "done", events
    done = api.wait_restore("alice", token)
    assert done["state"] == "done" and done["error"] is None, done
    # A third request, once the files are back, restores nothing.
    status, again = api.call("POST", "/api/homes/alice/restore", token)
    assert status == 202 and again["state"] in ("running", "done"), again
    assert api.wait_restore("alice", token)["state"] == "done"
    assert api.disk("alice") == api.files["alice"]
    assert api.home("alice")["state"] == "active"
    transitions = [e[3:5] for e in api.events("alice")[since:] if e[2] == "state"]
    assert transitions == [("archived", "restoring"), ("restoring", "active")], transitions


def test_restore_of_an_active_home_says_the_files_are_there(api: Api) -> None:
    """Bob's home was never archived: his restore has nothing to do. ``RestoreResult``
    documents that outcome as ``active``, and the tracker then says "Your files are on
    the volume"; a home the database knows answers ``joined`` and "Your files are back"
    instead (``restore_home`` labels every already-active home ``joined``)."""
    token = api.tokens["bob"]
    since = len(api.events("bob"))
    status, doc = api.call("POST", "/api/homes/bob/restore", token)
    assert status == 202, doc
    done = api.wait_restore("bob", token)
    assert done["state"] == "done", done
    assert api.events("bob")[since:] == []
    assert api.disk("bob") == api.files["bob"]
    assert done["result"]["outcome"] == "active", done
    assert done["message"] == "Your files are on the volume", done


def test_the_event_stream_of_a_home_with_nothing_to_do_ends(api: Api) -> None:
    events = api.sse("bob", api.tokens["bob"])
    assert len(events) >= 1 and events[-1][1]["state"] in ("done", "idle"), events


# --- leases --------------------------------------------------------------------------


def test_a_lease_on_an_archived_home_restores_it_and_lives_until_released(api: Api) -> None:
    api.ensure_archived("alice")
    token = api.tokens["alice"]
    status, lease = api.call(
        "POST", "/api/homes/alice/leases", token, {"holder": "job-42", "purpose": "nightly"}
    )
    assert status == 201, lease
    assert (lease["holder"], lease["purpose"], lease["released_at"]) == ("job-42", "nightly", None)
    assert lease["restore"]["user"] == "alice", lease
    assert api.wait_restore("alice", token)["state"] == "done"
    assert api.home("alice")["state"] == "active"
    assert api.disk("alice") == api.files["alice"]
    lid = lease["id"]
    listed = api.ok("GET", "/api/homes/alice/leases", token)["leases"]
    assert lid in {le["id"] for le in listed}
    status, renewed = api.call("PUT", f"/api/homes/alice/leases/{lid}", token, {"duration": "3h"})
    assert status == 200 and renewed["expires_at"] > lease["expires_at"], renewed
    status, released = api.call("DELETE", f"/api/homes/alice/leases/{lid}", token)
    assert (status, released) == (200, {"id": lid, "released": True})
    status, again = api.call("DELETE", f"/api/homes/alice/leases/{lid}", token)
    assert (status, again) == (200, {"id": lid, "released": False})
    status, doc = api.call("PUT", f"/api/homes/alice/leases/{lid}", token, {"duration": "1h"})
    assert status == 409, doc
    listed = api.ok("GET", "/api/homes/alice/leases", token)["leases"]
    assert lid not in {le["id"] for le in listed}


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_lease_of_another_home_or_no_lease_is_404(api: Api, method: str) -> None:
    was = api.lease_rows()
    body = {"duration": "1h"} if method == "PUT" else None
    for lid in (api.fixture_leases["bob"], "no-such-lease", "0" * 36):
        status, doc = api.call(method, f"/api/homes/alice/leases/{lid}", api.tokens["alice"], body)
        assert status == 404, (lid, doc)
    assert api.lease_rows() == was


# --- snapshots: list, browse, download ------------------------------------------------


def test_snapshots_are_listed_newest_first(api: Api) -> None:
    status, doc = api.call("GET", "/api/homes/bob/snapshots", api.tokens["bob"])
    assert status == 200, doc
    snaps = doc["snapshots"]
    assert len(snaps) == 2
    newer, older = snaps
    assert newer["time"] > older["time"]
    assert newer["parent"] == older["id"] and older["parent"] is None
    assert all(s["complete"] and s["files"] == 7 for s in snaps)


def test_tree_lists_the_root_and_nested_folders_with_raw_names(api: Api) -> None:
    token = api.tokens["alice"]
    snap = api.snapshots("alice")[0]["id"]
    root = api.ok("GET", snap_url("alice", snap, "tree"), token)
    assert root["snapshot"] == snap and root["path"] == ""
    by_name = {e["name"]: e for e in root["entries"]}
    assert set(by_name) == {
        "notes.txt",
        "data.bin",
        "empty.txt",
        "project",
        "link-to-notes",
        ODD_DIR.decode("utf-8", "replace"),
    }
    assert by_name["data.bin"]["type"] == "file" and by_name["data.bin"]["size"] == 300_000
    assert by_name["empty.txt"]["size"] == 0
    assert by_name["project"]["type"] == "dir" and by_name["project"]["size"] is None
    assert by_name["link-to-notes"] == {**by_name["link-to-notes"], "type": "symlink"}
    assert by_name["link-to-notes"]["target"] == "notes.txt"
    odd = by_name[ODD_DIR.decode("utf-8", "replace")]
    assert base64.b64decode(odd["name_b64"]) == ODD_DIR
    assert all("name_b64" not in e for n, e in by_name.items() if n != odd["name"])

    project = api.ok("GET", snap_url("alice", snap, "tree", "path=project"), token)
    assert {e["name"]: e["type"] for e in project["entries"]} == {
        "analysis.ipynb": "file",
        "sub": "dir",
        "escape": "symlink",
    }
    nested = api.ok("GET", snap_url("alice", snap, "tree", "path=project/sub"), token)
    names = {
        base64.b64decode(e["name_b64"]) if "name_b64" in e else e["name"].encode()
        for e in nested["entries"]
    }
    assert names == {b"deep.txt", ODD_FILE}
    # Browse into the folder whose name is not UTF-8, by its name_b64.
    inside = api.ok("GET", snap_url("alice", snap, "tree", f"path_b64={odd['name_b64']}"), token)
    assert [e["name"] for e in inside["entries"]] == ["inside.txt"]


def test_every_file_downloads_byte_identical(api: Api) -> None:
    token = api.tokens["alice"]
    wrong = []
    for rel, content in api.files["alice"].items():
        if isinstance(content, Link):
            continue
        status, headers, body = api.fetch(
            "GET", snap_url("alice", "latest", "file", path_query(rel)), token
        )
        if status != 200 or body != content:
            wrong.append((rel, status, body[:120]))
            continue
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers["content-length"]) == len(content)
        assert headers["content-disposition"].startswith("attachment; filename*=UTF-8''")
    assert wrong == [], f"files not downloaded as they are: {wrong}"


def test_a_user_recovers_an_old_version_of_their_notebook(api: Api) -> None:
    token = api.tokens["bob"]
    newer, older = api.ok("GET", "/api/homes/bob/snapshots", token)["snapshots"]
    query = path_query(NOTEBOOK)
    for ref, expected in [
        (older["id"], api.bob_notebook_v1),
        (older["id"][:8], api.bob_notebook_v1),  # a unique prefix
        (newer["id"], api.bob_notebook_v2),
        ("latest", api.bob_notebook_v2),
    ]:
        status, body = api.call("GET", snap_url("bob", ref, "file", query), token, raw=True)
        assert (status, body) == (200, expected), ref
    # The old version as a folder download too.
    status, body = api.call(
        "GET", snap_url("bob", older["id"], "archive", "path=project&format=zip"), token, raw=True
    )
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("analysis.ipynb") == api.bob_notebook_v1


def test_tar_download_unpacks_to_the_home(api: Api, tmp_path: Path) -> None:
    status, headers, body = api.fetch(
        "GET", snap_url("alice", "latest", "archive", "format=tar"), api.tokens["alice"]
    )
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/x-tar"
    # Named by whose and when the snapshot was taken.
    assert re.search(r"''alice-\d{4}-\d{2}-\d{2}\.tar$", headers["content-disposition"])
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = tar.getmembers()
        assert all(not os.path.isabs(m.name) and ".." not in m.name.split("/") for m in members)
        tar.extractall(tmp_path, filter="tar")
    unpacked = read_tree(tmp_path)
    assert unpacked == api.files["alice"]
    assert os.path.isdir(os.fsencode(tmp_path) + b"/" + ODD_DIR)


def test_zip_download_holds_the_whole_folder(api: Api) -> None:
    """Zip is for browsers: names that are not UTF-8 may be spelled differently, but
    every file of the folder is there with its content."""
    status, headers, body = api.fetch(
        "GET",
        snap_url("alice", "latest", "archive", "path=project&format=zip"),
        api.tokens["alice"],
    )
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/zip"
    assert "project.zip" in headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        contents = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    files = api.files["alice"]
    plain = {"analysis.ipynb": files[NOTEBOOK], "sub/deep.txt": files[NESTED + b"/deep.txt"]}
    odd = sorted(set(contents) - set(plain) - {"escape"})
    assert len(odd) == 1 and odd[0].startswith("sub/caf"), (
        f"the zip holds {sorted(contents)}: the file whose name is not UTF-8 is missing "
        f"(and whatever came after it)"
    )
    assert {n: contents[n] for n in plain} == plain
    assert contents[odd[0]] == files[NESTED + b"/" + ODD_FILE]
    assert all(PASSWD_MARK not in data for data in contents.values())


def test_a_download_that_fails_midway_does_not_look_complete(api: Api) -> None:
    """A blob that no longer matches its hash, found once the archive is streaming:
    the client must be able to tell (an error status, or a transfer cut short), not
    receive a well-formed 200 that lacks files."""
    from hometier.engine.export import find
    from hometier.repo import Repository
    from hometier.repo.ids import pack_key
    from hometier.store import open_store

    home = api.svc.homes / "carol"
    home.mkdir()
    (home / "a.txt").write_bytes(b"first file\n")
    (home / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    run_cli(api.svc, "backup", "carol")
    repo_root = api.svc.root / "repo"
    repo = Repository.open(open_store(f"file://{repo_root}"))
    snap = repo.find_snapshot("latest", "carol")
    loc = repo.locate(find(repo, snap, b"b.bin").content[-1])
    pack = repo_root / pack_key(loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0xFF
    pack.write_bytes(bytes(data))

    for query in ("format=tar", "format=zip", "path=b.bin"):
        kind = "file" if query.startswith("path") else "archive"
        conn = http.client.HTTPConnection("127.0.0.1", api.svc.port, timeout=60)
        try:
            conn.request(
                "GET",
                PREFIX + snap_url("carol", "latest", kind, query),
                headers={"Authorization": f"token {api.tokens['ops']}"},
            )
            resp = conn.getresponse()
            if resp.status >= 500:
                continue
            assert resp.status == 200, resp.status
            try:
                body = resp.read()
            except (http.client.IncompleteRead, ConnectionError):
                continue
        finally:
            conn.close()
        pytest.fail(
            f"{kind}?{query}: 200 and a complete-looking body of {len(body)} bytes, "
            "although the service failed while producing it"
        )


# --- whatever a client sends ---------------------------------------------------------

PATH_TRICKS = [
    ("file", "path=.."),
    ("file", "path=%2e%2e"),
    ("file", "path=../bob/notes.txt"),
    ("file", "path=project/../../bob/notes.txt"),
    ("file", "path=%2E%2E%2Fbob%2Fnotes.txt"),
    ("file", "path=/etc/passwd"),
    ("file", "path=//etc/passwd"),
    ("file", "path=project/escape"),  # a symlink pointing out of the home
    ("file", "path=project/escape/x"),
    ("file", "path=link-to-notes"),  # a symlink to a file inside
    ("file", "path=project"),  # a folder as a file
    ("file", "path="),
    ("file", "path=~"),
    ("file", "path=nope.txt"),
    ("file", "path=%ff"),
    ("file", "path_b64=" + b64(b"../bob/notes.txt")),
    ("file", "path_b64=" + b64(b"/etc/passwd")),
    ("file", "path_b64=not*base64"),
    ("tree", "path=.."),
    ("tree", "path=/etc"),
    ("tree", "path=project/escape"),
    ("tree", "path=notes.txt"),  # a file as a folder
    ("tree", "path=project%2F..%2F.."),
    ("archive", "path=..&format=tar"),
    ("archive", "path=project/escape&format=tar"),
    ("archive", "path=project/escape&format=zip"),
    ("archive", "path=/etc&format=zip"),
    ("archive", "format=rar"),
]


@pytest.mark.parametrize(("kind", "query"), PATH_TRICKS)
def test_path_tricks_are_4xx_and_never_reach_outside_the_snapshot(
    api: Api, kind: str, query: str
) -> None:
    status, _, body = api.fetch(
        "GET", snap_url("alice", "latest", kind, query), api.tokens["alice"]
    )
    assert status < 500, (kind, query, status, body[:300])
    assert PASSWD_MARK not in body
    assert b"notes of bob" not in body
    if kind == "file":
        assert 400 <= status < 500, (query, status, body[:200])
    elif kind == "tree":
        assert 400 <= status < 500, (query, status, body[:200])
    elif status == 200:  # an archive of a symlink: the link itself at most
        if b"format=tar" in query.encode():
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                assert all(not m.isfile() for m in tar.getmembers())
        else:
            with zipfile.ZipFile(io.BytesIO(body)) as zf:
                assert all(PASSWD_MARK not in zf.read(i) for i in zf.infolist())


@pytest.mark.parametrize(
    "url",
    [
        "/api/homes/alice%2F..%2Fbob/snapshots",
        "/api/homes/alice/snapshots/..%2F..%2Fbob/tree",
        "/api/homes/alice/snapshots/latest%2F..%2F../file?path=notes.txt",
        "/api/homes/alice/../bob/snapshots",
        "/api/homes/alice/snapshots/{bob_snap}/file?path=notes.txt",
        "/api/homes/alice/snapshots/{bob_prefix}/tree",
    ],
)
def test_tricks_in_the_url_path_do_not_reach_another_home(api: Api, url: str) -> None:
    bob_snap = api.snapshots("bob")[0]["id"]
    url = url.format(bob_snap=bob_snap, bob_prefix=bob_snap[:8])
    status, _, body = api.fetch("GET", url, api.tokens["alice"])
    assert 400 <= status < 500, (url, status, body[:300])
    assert b"notes of bob" not in body and b"deep down in bob" not in body


BAD_BODIES = [
    b"{",
    b"[]",
    b'["duration", "1h"]',
    b'"1h"',
    b"null",
    b"\xff\xfe\x00",
    b'{"duration": "abc"}',
    b'{"duration": 0}',
    b'{"duration": -5}',
    b'{"duration": "8d"}',
    b'{"duration": true}',
    b'{"duration": null}',
    b'{"duration": {"h": 1}}',
    b'{"holder": "' + b"x" * 70_000 + b'"}',
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda b: repr(b[:24]))
def test_bad_lease_bodies_are_400(api: Api, body: bytes) -> None:
    was = api.lease_rows()
    lid = api.fixture_leases["bob"]
    for method, path in [
        ("POST", "/api/homes/bob/leases"),
        ("PUT", f"/api/homes/bob/leases/{lid}"),
    ]:
        status, _, answer = api.fetch(method, path, api.tokens["bob"], body)
        assert status == 400, (method, body[:40], status, answer[:300])
        assert json.loads(answer)["kind"] == "UsageError"
    assert api.lease_rows() == was


@pytest.mark.parametrize(
    "body",
    [
        b'{"duration": 1e300}',
        b'{"duration": Infinity}',
        b'{"duration": NaN}',
        b'{"duration": 9223372036854775808}',
    ],
    ids=["1e300", "Infinity", "NaN", "2**63"],
)
def test_lease_durations_out_of_range_are_400_not_500(api: Api, body: bytes) -> None:
    """Python's json reads these numbers; ``parse_duration`` hands them to ``timedelta``,
    which raises OverflowError/ValueError: an uncaught 500 (lifecycle/units.py)."""
    status, _, answer = api.fetch("POST", "/api/homes/bob/leases", api.tokens["bob"], body)
    assert status == 400, (status, answer[:300])


def test_exempt_with_a_json_array_is_400(api: Api) -> None:
    status, _, body = api.fetch("PUT", "/api/homes/bob/exempt", api.tokens["ops"], b"[1]")
    assert status == 400, body
    assert api.home("bob")["exempt"] is False


def test_a_2_mb_body_is_refused_before_it_is_read(api: Api) -> None:
    """A body above the server's limit (1 MiB) is refused from its Content-Length alone,
    before it is sent; the service stays up."""
    with socket.create_connection(("127.0.0.1", api.svc.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {PREFIX}/api/homes/bob/leases HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: token {api.tokens['bob']}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
            ).encode()
        )
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 413), answer[:300]
    assert api.call("GET", "/health", None)[0] == 200
    # Under the server's limit but over the API's: a JSON error.
    status, _, body = api.fetch(
        "POST", "/api/homes/bob/leases", api.tokens["bob"], b"{" + b" " * 500_000 + b"}"
    )
    assert status in (400, 413) and json.loads(body)["error"], body[:300]


# --- metrics -------------------------------------------------------------------------


def test_metrics_agree_with_the_database(api: Api) -> None:
    status, headers, body = api.fetch("GET", "/metrics", api.tokens["ops"])
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    homes = api.status()
    for state in ("active", "archiving", "archived", "restoring", "failed"):
        want = sum(1 for h in homes if h["state"] == state)
        assert samples[("hometier_homes", (("state", state),))] == want, state
    hot = sum(h["hot_bytes"] for h in homes if h["state"] in ("active", "archiving", "restoring"))
    assert samples[("hometier_bytes", (("tier", "posix"),))] == hot
    stored = sum(h["stored_bytes"] for h in homes)
    assert samples[("hometier_bytes", (("tier", "object_added"),))] == stored
    assert any(name == "hometier_store_requests_total" for name, _ in samples)
