"""The restore-before-spawn hook against a service that misbehaves the ways a login storm,
a restart or an old version makes it: 503 with ``Retry-After``, a request that times
out, an event stream that breaks, no answer at all, no event stream (an older service),
a restore that fails or never ends.

The service here is a real tornado HTTP server on 127.0.0.1 scripted per test (the real
service's behaviour under load is the storm benchmark's and the e2e suite's); the hook is
the real one, with its real HTTP client, and the spawner a stand-in with a user name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.web import HTTPError

from hometier.hub import events
from hometier.hub.spawn_hook import make_pre_spawn_hook, restore_before_spawn
from hometier.tickets import verify_ticket

SECRET = "s" * 64
PREFIX = "/services/hometier"


@dataclass
class Script:
    """What the fake service does, and what it saw."""

    post: list[Callable[[], Any]] = field(default_factory=list)
    """One behaviour per POST, in order; the last one repeats."""
    streams: list[list[dict[str, Any] | str]] = field(default_factory=list)
    """Per stream: events (docs) or ``"close"``/``"hang"``; the last one repeats."""
    seen: list[str] = field(default_factory=list)
    users: list[str | None] = field(default_factory=list)
    events_exist: bool = True


def _job(state: str = "running", **kw: Any) -> dict[str, Any]:
    return {"user": "alice", "state": state, "message": kw.pop("message", state), **kw}


class Base(web.RequestHandler):
    @property
    def script(self) -> Script:
        return self.settings["script"]

    def prepare(self) -> None:
        header = self.request.headers.get("Authorization", "")
        self.script.users.append(verify_ticket(SECRET, header.removeprefix("token ")))

    def write_error(self, status_code: int, **kw: Any) -> None:
        exc = kw.get("exc_info", (None, None, None))[1]
        body = getattr(exc, "body", None)
        if body is not None:
            self.finish(json.dumps(body))
        else:
            self.finish("")


class Answer(HTTPError):
    def __init__(self, status: int, body: dict[str, Any] | None, retry_after: int = 0) -> None:
        super().__init__(status)
        self.body, self.retry_after = body, retry_after


class Restore(Base):
    async def post(self, user: str) -> None:
        s = self.script
        s.seen.append("POST")
        behaviour = s.post[min(len([x for x in s.seen if x == "POST"]), len(s.post)) - 1]
        result = behaviour()
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, Answer):
            if result.retry_after:
                self.set_header("Retry-After", str(result.retry_after))
            raise result
        self.set_status(202)
        self.finish(json.dumps(result))

    async def get(self, user: str) -> None:
        self.script.seen.append("GET")
        self.finish(json.dumps(_job("done", message="Your files are back")))


class Events(Base):
    async def get(self, user: str) -> None:
        s = self.script
        if not s.events_exist:
            raise Answer(404, None)
        s.seen.append("EVENTS")
        n = len([x for x in s.seen if x == "EVENTS"])
        plan = s.streams[min(n, len(s.streams)) - 1]
        self.set_header("Content-Type", "text/event-stream")
        for item in plan:
            if item == "close":
                return  # ends the response: the stream closed before the end
            if item == "hang":
                await asyncio.sleep(3600)
            self.write(f"event: progress\ndata: {json.dumps(item)}\n\n")
            await self.flush()
            await asyncio.sleep(0.05)


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, Script]]:
    script = Script()
    app = web.Application(
        [
            (rf"{PREFIX}/api/homes/(?P<user>[^/]+)/restore", Restore),
            (rf"{PREFIX}/api/homes/(?P<user>[^/]+)/restore/events", Events),
        ],
        script=script,
    )
    server = HTTPServer(app)
    sockets = __import__("tornado.netutil", fromlist=["bind_sockets"]).bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{PREFIX}", script
    finally:
        server.stop()
        await server.close_all_connections()


def _spawner() -> Any:
    async def progress() -> AsyncIterator[dict[str, Any]]:
        yield {"progress": 50, "message": "Spawning server..."}

    return SimpleNamespace(
        user=SimpleNamespace(name="alice", new_api_token=lambda **kw: pytest.fail("minted")),
        log=logging.getLogger("test-spawner"),
        progress=progress,
    )


async def test_503s_then_a_broken_stream_then_success(service: tuple[str, Script]) -> None:
    url, script = service
    script.post = [
        lambda: Answer(503, {"error": "busy", "kind": "StandIn"}, retry_after=1),
        lambda: Answer(503, {"error": "busy", "kind": "StandIn"}),
        lambda: _job(progress=0),
    ]
    script.streams = [
        [_job(progress=10, message="Restoring your files: 1 of 10 MB"), "close"],
        [_job(progress=60), _job("done", message="Your files are back")],
    ]
    spawner = _spawner()
    began = time.monotonic()
    hook = make_pre_spawn_hook(url, secret=SECRET, timeout=30)
    await hook(spawner)
    print("requests:", script.seen, f"{time.monotonic() - began:.1f}s")
    assert script.seen == ["POST", "POST", "POST", "EVENTS", "POST", "EVENTS"]
    assert time.monotonic() - began >= 1.0  # Retry-After was honoured
    assert set(script.users) == {"alice"}  # a valid ticket every time, no Hub token
    assert spawner._hometier_progress["done"] is True
    # The spawn page gets the restore's events first, then the spawner's own.
    shown = [e async for e in spawner.progress()]
    assert shown[0]["message"] == "Your files are back" and shown[-1]["message"].startswith("Spawn")


async def test_a_timed_out_request_is_retried_and_joins(
    service: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = service
    monkeypatch.setattr(events, "REQUEST_TIMEOUT", 0.5)

    async def slow() -> dict[str, Any]:
        await asyncio.sleep(1.5)
        return _job()

    script.post = [slow, lambda: _job(joined=True)]
    script.streams = [[_job("done", message="Your files are back")]]
    doc = await restore_before_spawn(_spawner(), url, secret=SECRET, timeout=20)
    assert doc["state"] == "done"
    assert script.seen[:2] == ["POST", "POST"] and script.seen.count("EVENTS") == 1


async def test_an_unreachable_service_fails_the_spawn_within_retry_for() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    began = time.monotonic()
    with pytest.raises(HTTPError) as info:
        await restore_before_spawn(
            _spawner(), f"http://127.0.0.1:{port}{PREFIX}", secret=SECRET, retry_for=1.5
        )
    took = time.monotonic() - began
    assert info.value.status_code == 503
    assert "unreachable" in info.value.log_message and "reference" in info.value.log_message
    assert 1.0 <= took < 15, took


async def test_nothing_archived_lets_the_spawn_go_on(service: tuple[str, Script]) -> None:
    url, script = service
    script.post = [
        lambda: Answer(404, {"error": "Home of alice not found.", "kind": "HomeNotFound"})
    ]
    spawner = _spawner()
    assert (await restore_before_spawn(spawner, url, secret=SECRET))["state"] == "done"
    assert spawner._hometier_progress["message"] == "No archived files to restore"
    assert script.seen == ["POST"]


async def test_a_failed_restore_fails_the_spawn_with_the_services_words(
    service: tuple[str, Script],
) -> None:
    url, script = service
    script.post = [lambda: _job()]
    failed = _job("failed", message="Your files could not be restored (reference abcd1234).")
    script.streams = [[failed]]
    with pytest.raises(HTTPError) as info:
        await restore_before_spawn(_spawner(), url, secret=SECRET)
    assert info.value.status_code == 503
    assert info.value.log_message == failed["message"]


async def test_a_restore_that_never_ends_stops_at_the_deadline(
    service: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = service
    monkeypatch.setattr(events, "STALL", 1.0)
    script.post = [lambda: _job()]
    script.streams = [[_job(progress=1), "hang"]]
    began = time.monotonic()
    with pytest.raises(HTTPError) as info:
        await restore_before_spawn(_spawner(), url, secret=SECRET, timeout=3)
    assert "taking too long" in info.value.log_message
    assert time.monotonic() - began < 10
    # A silent stream is given up on and reopened (after asking again): never one forever.
    assert script.seen.count("EVENTS") >= 2


async def test_an_older_service_without_the_event_stream_is_polled(
    service: tuple[str, Script],
) -> None:
    url, script = service
    script.events_exist = False
    script.post = [lambda: _job()]
    doc = await restore_before_spawn(_spawner(), url, secret=SECRET, timeout=20)
    assert doc["state"] == "done"
    assert "GET" in script.seen


async def test_fetch_home_retries_a_busy_service_and_joins(service: tuple[str, Script]) -> None:
    """The init container's ``hometier fetch-home`` (z2jh) retries the same way."""
    import os
    import sys

    from hometier.tickets import mint_ticket

    url, script = service
    script.post = [
        lambda: Answer(503, {"error": "busy", "kind": "StandIn"}, retry_after=1),
        lambda: _job(progress=0),
    ]
    env = dict(os.environ, HOMETIER_RESTORE_TOKEN=mint_ticket(SECRET, "alice", 60))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hometier.cli.main",
        "fetch-home",
        "--user",
        "alice",
        "--service-url",
        url,
        "--timeout",
        "30",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    print(err.decode())
    assert proc.returncode == 0, err.decode()
    assert script.seen[:2] == ["POST", "POST"] and "GET" in script.seen
    assert "trying again" in err.decode()
