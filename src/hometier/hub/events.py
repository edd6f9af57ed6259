"""Talking to the service from inside the Hub: requests that retry, and a server-sent
events stream read as it arrives (tornado's client, as the Hub itself uses).

What is retried, within the caller's deadline: no answer at all (refused, reset, timed
out: tornado's 599), 502, 503 and 504, with exponential backoff and full jitter,
``Retry-After`` honoured — for at most ``retry_for`` seconds in a row (120) when the
service is silent or swamped, and ``spoken_for`` (5) when it answered 503 with its own
reason (its database or bucket is down): that reason then fails the spawn, so the user
reads why instead of waiting for the whole start timeout. A retried ``POST …/restore``
is safe: it joins the restore in progress.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

UNREACHABLE = 599
"""tornado's code for "no HTTP answer" (refused, reset, timed out)."""
RETRYABLE = frozenset({UNREACHABLE, 502, 503, 504})
MAX_CLIENTS = 2048
"""Connections one Hub may hold open to the service at once (one event stream per login
in progress). tornado's shared client allows 10 and queues the rest: a storm's requests
waited behind the streams of the first ten logins, and so would the Hub's own requests."""
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
STALL = 45.0
"""Seconds without a byte on an event stream (the service sends a keepalive every 15)
before it is given up and reopened."""


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncHTTPClient] = (
    weakref.WeakKeyDictionary()
)


def client() -> AsyncHTTPClient:
    """hometier's own HTTP client on the running loop (never tornado's shared one)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = AsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS)
        _clients[loop] = found
    return found


@dataclass
class Retry:
    deadline: float
    """``time.monotonic()`` after which nothing is tried any more."""
    retry_for: float = 120.0
    """Seconds of silence (no answer, 502, 504, a 503 without a body) ridden out: the
    service restarting, or swamped by a login storm."""
    spoken_for: float = 5.0
    """Seconds a 503 that says why (the service's own answer: its database or bucket is
    down) is retried before the spawn fails with that reason: long enough for a blip,
    short enough that the user reads why instead of waiting."""
    base: float = 0.5
    cap: float = 5.0
    attempts: int = 0
    failing_since: float | None = None

    def ok(self) -> None:
        self.failing_since = None

    async def wait(self, exc: HTTPClientError) -> bool:
        """After a retryable failure: sleep and return True, or False when out of time."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        window = self.spoken_for if _spoken(exc) else self.retry_for
        left = min(window - (now - self.failing_since), self.deadline - now)
        delay = random.uniform(0, min(self.cap, self.base * 2**self.attempts))
        retry_after = _retry_after(exc)
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, left)
        if delay <= 0:
            return False
        self.attempts += 1
        await asyncio.sleep(delay)
        return True


def _spoken(exc: HTTPClientError) -> bool:
    """True when the answer carries the service's own error document."""
    try:
        body = exc.response.body if exc.response is not None else b""
        return exc.code != UNREACHABLE and bool(json.loads(body or b"{}").get("error"))
    except (ValueError, AttributeError):
        return False


def _retry_after(exc: HTTPClientError) -> float | None:
    try:
        value = exc.response.headers.get("Retry-After") if exc.response else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, HTTPClientError) and exc.code in RETRYABLE


def as_client_error(exc: BaseException) -> HTTPClientError:
    """A connection-level ``OSError`` as tornado's "no answer" (599)."""
    if isinstance(exc, HTTPClientError):
        return exc
    return HTTPClientError(UNREACHABLE, str(exc))


async def call(
    method: str, url: str, token: str, retry: Retry, timeout: float | None = None
) -> dict[str, Any]:
    """One JSON request, retried as the module says; raises the last ``HTTPClientError``."""
    timeout = REQUEST_TIMEOUT if timeout is None else timeout
    while True:
        req = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            body=b"{}" if method == "POST" else None,
            connect_timeout=min(CONNECT_TIMEOUT, timeout),
            request_timeout=min(timeout, max(1.0, retry.deadline - time.monotonic())),
        )
        try:
            resp = await client().fetch(req)
        except (HTTPClientError, OSError) as raw:
            exc = as_client_error(raw)
            if retryable(exc) and await retry.wait(exc):
                continue
            raise exc from raw
        retry.ok()
        doc: dict[str, Any] = json.loads(resp.body or b"{}")
        return doc


class StreamEnded(Exception):
    """The event stream closed before the restore finished (the caller reopens it)."""


async def follow(
    url: str,
    token: str,
    on_event: Callable[[dict[str, Any]], bool],
    deadline: float,
) -> None:
    """Read ``url``'s server-sent events, calling ``on_event(doc)`` for each ``progress``
    (and ``error``) event until it returns True. Raises ``HTTPClientError`` (no answer,
    an error status) or ``StreamEnded`` (closed early, or silent for ``STALL`` seconds)."""
    buf = bytearray()
    finished = asyncio.Event()
    last = time.monotonic()
    failure: list[BaseException] = []
    closed = False

    def feed(chunk: bytes) -> None:
        nonlocal last
        last = time.monotonic()
        if closed:
            # Given up on: raising here makes tornado close the connection.
            raise StreamEnded("abandoned")
        if finished.is_set():
            return
        buf.extend(chunk)
        while b"\n\n" in buf:
            raw, _, rest = bytes(buf).partition(b"\n\n")
            buf[:] = rest
            kind, data = "message", []
            for line in raw.decode("utf-8", "replace").splitlines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if kind not in ("progress", "error") or not data:
                continue  # keepalive comments, unknown events
            try:
                doc = json.loads("\n".join(data))
            except ValueError:
                continue
            if kind == "error":
                doc.setdefault("state", "failed")
            try:
                if on_event(doc):
                    finished.set()
            except BaseException as exc:  # noqa: BLE001 - re-raised by follow()
                failure.append(exc)
                finished.set()

    req = HTTPRequest(
        url,
        headers={"Authorization": f"token {token}", "Accept": "text/event-stream"},
        streaming_callback=feed,
        connect_timeout=CONNECT_TIMEOUT,
        request_timeout=max(1.0, deadline - time.monotonic()),
    )
    fetch = asyncio.ensure_future(client().fetch(req))
    # Whatever becomes of a stream given up on, its outcome is read here (not logged as
    # "never retrieved"); it is not cancelled, which tornado would log as an error.
    fetch.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        while not finished.is_set():
            done = fetch.done()
            if done:
                fetch.result()  # raises for an error status or no answer
                break
            if time.monotonic() - last > STALL:
                raise StreamEnded(f"no event for {STALL:.0f} s")
            try:
                await asyncio.wait_for(finished.wait(), timeout=1.0)
            except TimeoutError:
                pass
    except OSError as exc:
        raise as_client_error(exc) from exc
    finally:
        closed = True
    if failure:
        raise failure[0]
    if not finished.is_set():
        raise StreamEnded("the stream closed before the restore finished")
