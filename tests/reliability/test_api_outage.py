"""The service while what it stands on is down: the state database (a PostgreSQL of the
test's own, stopped with ``pg_ctl -m fast`` and started again on the same port and data)
and object storage (SeaweedFS behind the fault proxy, which then resets every
connection).

What must hold, for every family of API operations and for the dashboard: the answer is
``503 Service Unavailable`` (never a 500), with ``Retry-After`` and the API's JSON error
saying what is down in words (no URL, host, bucket, key or path), and a reference that
the service's log carries at WARNING with the detail; nothing changed in the database;
once the part is back the same requests succeed. ``/health`` answers 503 while the
database is down. The restore at login (the spawn hook, called here as JupyterHub calls
it) fails at once with a sentence a user can act on instead of waiting.

``world`` (module scope) is a real JupyterHub and ``hometier serve --no-loop`` on
PostgreSQL and S3: alice and carol archived (quarantine purged), bob active with a
snapshot and a lease; ``ops`` is hometier's admin.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from tornado.web import HTTPError

from fixtures.servers import S3Server, ServerUnavailable, start_pg_server
from fixtures.service import PREFIX, Service, start_hub_with_service
from hometier.hub.spawn_hook import restore_before_spawn
from hometier.lifecycle.context import QUARANTINE_DIR
from hometier.repo.snapshot import user_key
from hometier.scopes import RESTORE
from reliability.conftest import OwnPg
from reliability.faultproxy import FaultProxy, Rule

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

USERS = ("alice", "bob", "carol", "ops")
REF = re.compile(r"\(reference ([0-9a-f]{8})\)")
KEY = re.compile(r"\b(?:packs/[0-9a-f]{2}/|index/[0-9a-f]{8}|snapshots/[^/\s\"']+/[0-9a-f]{16})")
"""An object key of the repository (a snapshot's is ``snapshots/<user key>/<id>``; the
dashboard's own links hold ``snapshots/<id>/browse``, which is no key)."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class World:
    svc: Service
    pg: OwnPg
    proxy: FaultProxy
    s3: S3Server
    store_url: str
    db_url: str
    tokens: dict[str, str] = field(repr=False, default_factory=dict)
    lease: str = ""

    def call(self, method: str, path: str, user: str | None = "ops", body: Any = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.svc.port, timeout=120)
        try:
            headers = {"Authorization": f"token {self.tokens[user]}"} if user else {}
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, PREFIX + path, body=data, headers=headers)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def log(self) -> str:
        return (self.svc.root / "service.log").read_text(errors="replace")

    def forbidden_words(self) -> list[str]:
        """What no user-facing text may contain: where things are."""
        bucket = self.store_url.removeprefix("s3://").split("/", 1)
        host = self.proxy.url.removeprefix("http://")
        return [
            self.store_url,
            bucket[1],  # the repository's prefix in the bucket
            "s3://",
            host,
            self.proxy.url,
            self.s3.endpoint.removeprefix("http://"),
            f":{self.pg.server.port}",
            self.db_url.split("@", 1)[-1],
            str(self.svc.homes),
            str(self.svc.root),
            QUARANTINE_DIR,
            ".hometier-restore",
            self.s3.access_key,
            self.s3.secret_key,
            "Traceback",
        ]

    def assert_clean(self, text: str) -> None:
        for word in self.forbidden_words():
            assert word not in text, f"{word!r} leaked into: {text[:600]}"
        key = KEY.search(text)
        assert key is None, f"the object key {key.group(0)!r} leaked into: {text[:600]}"

    def db_state(self) -> dict[str, Any]:
        """The rows an outage must not change (read straight from PostgreSQL)."""
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as c:
                homes = c.execute(
                    text('SELECT "user", state, version, exempt, error FROM homes ORDER BY 1')
                ).all()
                leases = c.execute(
                    text("SELECT id, expires_at, released_at FROM leases ORDER BY 1")
                ).all()
                events = c.execute(text("SELECT count(*) FROM events")).scalar()
            return {"homes": [tuple(r) for r in homes], "leases": leases, "events": events}
        finally:
            engine.dispose()


def _make_home(path: Path, user: str) -> None:
    (path / "project").mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text(f"notes of {user}\n" * 50)
    (path / "project" / "data.bin").write_bytes(os.urandom(200_000))
    (path / "project" / "analysis.ipynb").write_text(json.dumps({"cells": [], "user": user}))


def _cli(svc: Service, *args: str) -> str:
    done = svc.cli(*args, check=False)
    assert done.returncode == 0, f"hometier {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def purge_quarantine(svc: Service, user: str) -> None:
    root = svc.homes / QUARANTINE_DIR
    if root.is_dir():
        for q in root.iterdir():
            if q.name.startswith(user_key(user) + "."):
                shutil.rmtree(q)


def start_world(root: Path, s3: S3Server) -> World:
    """A Hub and ``hometier serve`` on a PostgreSQL of its own and S3 through a proxy."""
    if not s3.running:
        s3.start_s3()
    pg = OwnPg(start_pg_server())
    proxy = FaultProxy(s3.endpoint, seed=7)
    svc: Service | None = None
    try:
        db_url = pg.server.create_database("hometier")
        store_url = s3.url(f"t-{uuid.uuid4().hex}")
        with warnings.catch_warnings():
            # Service.start hands service.log to the child and drops its file object.
            warnings.simplefilter("ignore", ResourceWarning)
            svc = start_hub_with_service(root)
            svc.stop()  # started on SQLite and a folder: move it to PostgreSQL and S3
            svc.env.update(HOMETIER_DB=db_url, HOMETIER_STORE=store_url)
            svc.env["AWS_ENDPOINT_URL"] = proxy.url
            for user in ("alice", "bob", "carol"):
                _make_home(svc.homes / user, user)
            _cli(svc, "backup", "--init", "bob")
            for user in ("alice", "carol"):
                _cli(svc, "archive", user)
                purge_quarantine(svc, user)
            _cli(svc, "serve", "--once", "--dry-run")
            lease = json.loads(_cli(svc, "--json", "lease", "bob", "--holder", "fixture"))
            svc.start()
        svc.hub.create_users(*USERS)
        world = World(svc, pg, proxy, s3, store_url, db_url, lease=lease["lease"])
        world.tokens = {user: svc.user_token(user) for user in USERS}
        return world
    except BaseException:
        if svc is not None:
            svc.close()
        proxy.close()
        pg.server.close()
        raise


@contextmanager
def running_world(root: Path, s3_server: S3Server) -> Iterator[World]:
    """``start_world`` for a module's fixture: skips when a part is missing, stops
    everything it started afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]'")
    try:
        w = start_world(root, s3_server)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield w
    finally:
        w.svc.close()
        w.proxy.close()
        w.pg.server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("outage"), s3_server) as w:
        yield w


# --- the spawn hook, as JupyterHub calls it ------------------------------------------------


class _HubUser:
    def __init__(self, name: str, token: str) -> None:
        self.name = name
        self.token = token

    def new_api_token(self, note: str, expires_in: int, scopes: list[str]) -> str:
        assert scopes == [f"{RESTORE}!user={self.name}"], scopes
        return self.token


class FakeSpawner:
    """What ``restore_before_spawn`` uses of a spawner: its user (whose
    ``new_api_token`` hands out a real Hub token with exactly the restore scope) and its
    log. ``messages`` records every progress message the spawn page would show."""

    def __init__(self, world: World, user: str) -> None:
        token = world.svc.user_token(user, [f"{RESTORE}!user={user}"], expires_in=600)
        self.user = _HubUser(user, token)
        self.log = logging.getLogger("test.spawner")
        self.messages: list[str] = []

    async def spawn(self, url: str, timeout: float = 60.0) -> tuple[float, HTTPError | None]:
        """Run the hook; (seconds it took, the HTTPError the spawn failed with)."""

        async def watch() -> None:
            while True:
                state = getattr(self, "_hometier_progress", None)
                msg = state.get("message") if state else None
                if msg and (not self.messages or self.messages[-1] != msg):
                    self.messages.append(msg)
                await asyncio.sleep(0.02)

        began = time.monotonic()
        watcher = asyncio.ensure_future(watch())
        failed = None
        try:
            await restore_before_spawn(self, url, timeout=timeout)
        except HTTPError as exc:
            failed = exc
        finally:
            await asyncio.sleep(0.05)  # the last message
            watcher.cancel()
        return time.monotonic() - began, failed


# --- the database goes away ----------------------------------------------------------------


def _requests(world: World) -> list[tuple[str, str, str | None, Any]]:
    """One request of every family that needs the database: (method, path, user, body)."""
    return [
        ("GET", "/api/homes", "ops", None),
        ("GET", "/api/homes/bob", "bob", None),
        ("GET", "/api/homes/bob", "ops", None),
        ("GET", "/api/homes/bob/leases", "bob", None),
        ("POST", "/api/homes/bob/leases", "bob", {"holder": "job", "duration": "1h"}),
        ("PUT", f"/api/homes/bob/leases/{world.lease}", "ops", {"duration": "2h"}),
        ("DELETE", f"/api/homes/bob/leases/{world.lease}", "ops", None),
        ("PUT", "/api/homes/bob/exempt", "ops", {"reason": "thesis"}),
        ("DELETE", "/api/homes/bob/exempt", "ops", None),
        # Answered 409 once the database is back: bob holds a lease (taken just above).
        ("POST", "/api/homes/bob/archive", "ops", None),
        ("POST", "/api/homes/alice/restore", "alice", None),
        ("GET", "/api/homes/alice/restore", "alice", None),
        ("GET", "/api/homes/alice/restore/events", "alice", None),
        ("POST", "/api/homes/bob/restored", "bob", None),
        ("GET", "/metrics", "ops", None),
    ]


def test_a_database_outage_is_503_everywhere_changes_nothing_and_heals(world: World) -> None:
    before = world.db_state()
    assert world.call("GET", "/health", None).status == 200
    world.pg.stop()
    try:
        seen: dict[str, str] = {}
        began = time.monotonic()
        for method, path, user, body in _requests(world):
            got = world.call(method, path, user, body)
            where = f"{method} {path} as {user}"
            assert got.status == 503, (where, got.status, got.text[:500])
            assert got.headers.get("retry-after", "").isdigit(), (where, got.headers)
            doc = got.doc
            assert doc["kind"] == "StateUnavailable", (where, doc)
            assert "state database is unreachable" in doc["error"], (where, doc)
            assert doc["reference"] and doc["reference"] in doc["error"], (where, doc)
            if user == "ops":  # hometier's admin also gets the detail
                assert "OperationalError" in doc["detail"], (where, doc)
                del doc["detail"]
            else:
                assert "detail" not in doc, (where, doc)
            world.assert_clean(json.dumps(doc))
            seen[doc["reference"]] = where
        took = time.monotonic() - began
        print(f"{len(seen)} requests answered 503 in {took:.1f}s while the database was down")

        health = world.call("GET", "/health", None)
        assert health.status == 503, health.text
        assert health.headers.get("retry-after", "").isdigit()
        assert health.doc["status"] == "unavailable" and health.doc["database"] == "unreachable"
        world.assert_clean(health.text)

        # The dashboard: an error page that says so, not a traceback.
        page = world.call("GET", "/homes/bob", "bob")
        assert page.status == 503, page.text[:500]
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers.get("retry-after", "").isdigit()
        assert "Temporarily unavailable" in page.text
        assert "state database is unreachable" in page.text
        world.assert_clean(page.text)
        admin_page = world.call("GET", "/admin", "ops")
        assert admin_page.status == 503 and "state database is unreachable" in admin_page.text

        # What needs only the bucket still works.
        snaps = world.call("GET", "/api/homes/bob/snapshots", "bob")
        assert snaps.status == 200 and snaps.doc["snapshots"], snaps.text[:300]

        # The restore at login fails at once, saying why, instead of waiting.
        spawner = FakeSpawner(world, "alice")
        took, failed = asyncio.run(spawner.spawn(world.svc.url))
        assert failed is not None and failed.status_code == 503
        message = failed.log_message or ""
        print(f"spawn during the outage failed after {took:.1f}s: {message}")
        assert took < 15, took
        assert message.startswith("Your files could not be restored")
        assert "state database is unreachable" in message and REF.search(message), message
        assert spawner.messages[-1] == message, spawner.messages
        world.assert_clean(" ".join(spawner.messages))
    finally:
        if not world.pg.running:
            world.pg.start()

    # Logged once each, at WARNING, with the detail; no 500, no traceback.
    log = world.log()
    for ref, where in seen.items():
        lines = [line for line in log.splitlines() if f"reference {ref}" in line]
        assert len(lines) == 1, (where, lines)
        assert "WARNING" in lines[0] and "OperationalError" in lines[0], lines[0]
    assert "Traceback" not in log, log[-3000:]
    five_hundreds = re.findall(r".*\b50[02] (?:GET|POST|PUT|DELETE) .*", log)
    assert not five_hundreds, five_hundreds

    assert world.db_state() == before, "a request changed the database during the outage"

    # Back: the same requests succeed (in this order: lease renewal before release, ...).
    assert world.call("GET", "/health", None).status == 200
    for method, path, user, body in _requests(world):
        got = world.call(method, path, user, body)
        if path.endswith("/archive"):
            assert (got.status, got.doc["kind"]) == (409, "NotEligible"), got.text
            continue
        assert 200 <= got.status < 300, (method, path, got.status, got.text[:500])
    done = _wait_restore(world, "alice")
    assert done["state"] == "done", done
    assert world.call("GET", "/homes/bob", "bob").status == 200


def _wait_restore(world: World, user: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = world.call("GET", f"/api/homes/{user}/restore", user)
        assert got.status == 200, got.text
        if got.doc["state"] != "running":
            return dict(got.doc)
        assert time.monotonic() < deadline, got.doc
        time.sleep(0.1)


# --- object storage goes away --------------------------------------------------------------


def test_an_unreachable_store_is_503_on_browse_and_download_and_heals(world: World) -> None:
    snaps = world.call("GET", "/api/homes/bob/snapshots", "bob").doc["snapshots"]
    snap = snaps[0]["id"]
    reads = [
        ("GET", "/api/homes/bob/snapshots"),
        ("GET", f"/api/homes/bob/snapshots/{snap}/tree?path=project"),
        ("GET", f"/api/homes/bob/snapshots/{snap}/file?path=notes.txt"),
        ("GET", f"/api/homes/bob/snapshots/{snap}/archive?format=tar&path=project"),
        ("GET", "/api/homes/bob/snapshots/latest/archive?format=zip"),
    ]
    world.proxy.set_rules(Rule("reset"))  # every connection to S3 is refused mid-way
    waits: list[float] = []
    try:
        for method, path in reads:
            for user in ("bob", "ops"):
                began = time.monotonic()
                got = world.call(method, path, user)
                waits.append(time.monotonic() - began)
                where = f"{method} {path} as {user}"
                assert got.status == 503, (where, got.status, got.text[:500])
                assert got.headers.get("retry-after", "").isdigit(), (where, got.headers)
                doc = got.doc
                assert doc["kind"] == "StorageUnavailable", (where, doc)
                assert "Object storage is unreachable" in doc["error"], (where, doc)
                assert doc["reference"] in doc["error"]
                if user == "ops":
                    assert world.store_url in doc.pop("detail"), (where, doc)
                world.assert_clean(json.dumps(doc))
                assert doc["reference"] in world.log()

        page = world.call("GET", f"/homes/bob/snapshots/{snap}/browse", "bob")
        assert page.status == 503 and "Object storage is unreachable" in page.text, page.text
        world.assert_clean(page.text)
        home = world.call("GET", "/homes/bob", "bob")  # the page, without its snapshots
        assert home.status == 200, home.text[:500]
        assert "The snapshots could not be listed: Object storage is unreachable" in home.text
        world.assert_clean(home.text)
        assert world.call("GET", "/health", None).status == 200  # the database is fine
    finally:
        world.proxy.clear()
    print(
        f"{len(waits)} reads answered 503 while S3 was unreachable, after "
        f"{min(waits):.1f}-{max(waits):.1f}s each (the store's retries)"
    )

    for method, path in reads:
        got = world.call(method, path, "bob")
        assert got.status == 200, (method, path, got.status, got.text[:300])
    got = world.call("GET", f"/api/homes/bob/snapshots/{snap}/file?path=notes.txt", "bob")
    assert got.body == b"notes of bob\n" * 50
