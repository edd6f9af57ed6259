"""A fault-injecting HTTP/1.1 proxy for S3 tests (stdlib only, threads).

``FaultProxy(upstream)`` listens on 127.0.0.1 and forwards every request, byte for byte,
to ``upstream`` (the SeaweedFS S3 endpoint) over a connection of its own per client
connection; the ``Host`` header is left alone, so SigV4 signatures made for the proxy's
address still verify upstream. Rules (``Rule``) pick requests by method, a regex
searched in the request target, their rank among the requests the rule matched
(``nth``, 1-based), at most ``times`` firings and a probability drawn from a seeded RNG,
and do one of:

- ``"503"``: answer ``503 SlowDown`` with an S3 XML error body; upstream never sees it;
  the connection stays usable (keep-alive), as with a real throttling S3.
- ``"reset"``: close the client connection with a TCP RST, before the request reaches
  upstream (``when="before"``) or after upstream applied it (``when="after"``: the
  reply is lost, the write happened).
- ``"stall"``: hold the response for ``delay`` seconds (capped at ``MAX_STALL``), then
  send it whole.
- ``"truncate"``: send the status line, the headers and the first ``at_byte`` bytes of
  the body, then close (FIN). With ``lie=True`` ``Content-Length`` is rewritten to the
  truncated size first, so the client sees a well-formed but short response (a broken
  middlebox or server).
- ``"corrupt"``: flip one byte of the body at ``at_byte`` (modulo its length), keep the
  length: the bytes arrive, wrong.

Everything else is forwarded unchanged: request and response bodies framed by
``Content-Length``, ``Transfer-Encoding: chunked`` (passed through raw) or, for a
response, the end of the connection; ``HEAD``, 1xx, 204 and 304 carry no body.
``proxy.events`` lists what happened to every request.
"""

from __future__ import annotations

import random
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlparse

MAX_STALL = 30.0
"""No stall lasts longer than this, whatever a rule asks."""
ACTIONS = ("503", "reset", "stall", "truncate", "corrupt")
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<Resource>%s</Resource><RequestId>faultproxy-%d</RequestId></Error>"
)


@dataclass
class Rule:
    """Which requests to break, and how (see the module docstring)."""

    action: str
    method: str | None = None
    path: str | None = None
    """A regex searched (``re.search``) in the request target (path and query)."""
    nth: int | Iterable[int] | None = None
    """Only the nth matching request(s), counting from 1; None: any."""
    times: int | None = None
    """Fire at most this many times; None: no limit."""
    probability: float | None = None
    """Fire with this probability (the proxy's seeded RNG); None: always."""
    delay: float = 0.0
    at_byte: int = 0
    when: str = "before"
    lie: bool = False
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}: one of {ACTIONS}")
        if self.when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self._path = re.compile(self.path) if self.path is not None else None
        self._nth = {self.nth} if isinstance(self.nth, int) else set(self.nth or ())

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and method.upper() != self.method.upper():
            return False
        return self._path is None or self._path.search(target) is not None

    def fires(self, rng: random.Random) -> bool:
        """Called for a matching request (under the proxy's lock)."""
        self.seen += 1
        if self._nth and self.seen not in self._nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability is not None and rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Event:
    method: str
    target: str
    action: str | None
    """The fault applied, or None when forwarded unchanged."""
    status: int | None
    """The status the client got (None: none, the connection was cut first)."""


class _Closed(Exception):
    """The peer closed the connection."""


def _read_head(f: IO[bytes]) -> bytes | None:
    """Bytes up to and including the blank line; None at a clean EOF before any byte."""
    lines: list[bytes] = []
    while True:
        line = f.readline(65537)
        if not line:
            if lines:
                raise _Closed("connection closed inside a message head")
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)
        if len(lines) > 200:
            raise _Closed("message head too long")


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    text = head.decode("latin-1")
    first, *rest = text.split("\r\n")
    out: dict[str, str] = {}
    for line in rest:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return first, out


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Closed(f"connection closed after {len(data)} of {n} body bytes")
    return data


def _read_chunked(f: IO[bytes]) -> bytes:
    """A chunked body, raw (sizes, data and trailers as they came)."""
    parts = []
    while True:
        size_line = f.readline(65537)
        if not size_line:
            raise _Closed("connection closed inside a chunked body")
        parts.append(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the blank line
                line = f.readline(65537)
                if not line:
                    raise _Closed("connection closed inside chunked trailers")
                parts.append(line)
                if line in (b"\r\n", b"\n"):
                    return b"".join(parts)
        parts.append(_read_exact(f, size + 2))


def _dechunk(raw: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Upstream:
    """One connection to the upstream server, reopened when it closes."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.sock: socket.socket | None = None
        self.rfile: IO[bytes] | None = None

    def exchange(self, method: str, request: bytes) -> tuple[int, bytes, bytes, bool]:
        """Send a whole request; returns (status, head, raw body, upstream closed).

        Interim (1xx) responses are folded into ``head``. A request on a kept-alive
        connection that upstream had closed meanwhile is sent once more on a new one.
        """
        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection(self.addr, timeout=MAX_STALL * 4)
                self.rfile = self.sock.makefile("rb")
            assert self.sock is not None and self.rfile is not None
            try:
                self.sock.sendall(request)
                head = _read_head(self.rfile)
                if head is None:
                    raise _Closed("upstream closed before answering")
            except (OSError, _Closed):
                self.close()
                if fresh or attempt:
                    raise
                continue
            return self._rest(method, head)
        raise AssertionError("unreachable")

    def _rest(self, method: str, head: bytes) -> tuple[int, bytes, bytes, bool]:
        assert self.rfile is not None
        heads = b""
        while True:
            first, hdrs = _headers(head)
            status = int(first.split()[1])
            if 100 <= status < 200 and status != 101:
                heads += head
                nxt = _read_head(self.rfile)
                if nxt is None:
                    raise _Closed("upstream closed after an interim response")
                head = nxt
                continue
            break
        closed = hdrs.get("connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            body = _read_chunked(self.rfile)
        elif "content-length" in hdrs:
            body = _read_exact(self.rfile, int(hdrs["content-length"]))
        else:
            body = self.rfile.read()
            closed = True
        if closed:
            self.close()
        return status, heads + head, body, closed

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        sock: socket.socket = self.request
        rfile = sock.makefile("rb")
        upstream = _Upstream(proxy.upstream)
        try:
            while not proxy.closed:
                try:
                    head = _read_head(rfile)
                except (_Closed, OSError):
                    return
                if head is None:
                    return
                first, hdrs = _headers(head)
                method, target = first.split(" ", 2)[:2]
                try:
                    if "chunked" in hdrs.get("transfer-encoding", "").lower():
                        body = _read_chunked(rfile)
                    else:
                        body = _read_exact(rfile, int(hdrs.get("content-length", "0") or 0))
                except (_Closed, OSError, ValueError):
                    return
                keep = self._one(proxy, upstream, sock, method, target, head + body)
                if not keep or hdrs.get("connection", "").lower() == "close":
                    return
        finally:
            upstream.close()
            rfile.close()

    def _one(
        self,
        proxy: FaultProxy,
        upstream: _Upstream,
        sock: socket.socket,
        method: str,
        target: str,
        request: bytes,
    ) -> bool:
        """Handle one request; False when the client connection must end."""
        rule = proxy._decide(method, target)
        action = rule.action if rule is not None else None
        if action == "503":
            n = proxy._next_id()
            xml = _SLOWDOWN % (target.split("?", 1)[0].encode("latin-1"), n)
            head = (
                "HTTP/1.1 503 Slow Down\r\n"
                "Content-Type: application/xml\r\n"
                f"Content-Length: {len(xml)}\r\n"
                f"x-amz-request-id: faultproxy-{n}\r\n"
                "Retry-After: 0\r\n"
                "\r\n"
            ).encode()
            proxy._record(method, target, action, 503)
            try:
                sock.sendall(head if method == "HEAD" else head + xml)
            except OSError:
                return False
            return True
        if action == "reset" and rule is not None and rule.when == "before":
            proxy._record(method, target, action, None)
            _reset(sock)
            return False
        try:
            status, head, body, up_closed = upstream.exchange(method, request)
        except (OSError, _Closed):
            # Upstream is down: the client sees the connection drop, as it would.
            proxy._record(method, target, "upstream-down", None)
            _reset(sock)
            return False
        if action == "reset":
            proxy._record(method, target, action, None)
            _reset(sock)
            return False
        if action == "stall" and rule is not None:
            time.sleep(min(max(rule.delay, 0.0), MAX_STALL))
        if action == "truncate" and rule is not None:
            cut_head = head
            if rule.lie:
                first, hdrs = _headers(head)
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    body = _dechunk(body)
                cut_head = _set_length(head, min(rule.at_byte, len(body)))
            proxy._record(method, target, action, status)
            try:
                sock.sendall(cut_head + body[: max(rule.at_byte, 0)])
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
        if action == "corrupt" and rule is not None and body:
            _, hdrs = _headers(head)
            if "chunked" not in hdrs.get("transfer-encoding", "").lower():
                i = rule.at_byte % len(body)
                body = body[:i] + bytes([body[i] ^ 0x5A]) + body[i + 1 :]
        proxy._record(method, target, action, status)
        try:
            sock.sendall(head + body)
        except OSError:
            return False
        return not up_closed


def _set_length(head: bytes, n: int) -> bytes:
    """The head with ``Content-Length: n`` and without chunked framing."""
    lines = head.split(b"\r\n")
    kept = [
        ln
        for ln in lines[1:]
        if ln and not ln.lower().startswith((b"content-length:", b"transfer-encoding:"))
    ]
    return b"\r\n".join([lines[0], *kept, b"Content-Length: %d" % n, b"", b""])


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: FaultProxy


class FaultProxy:
    """The proxy; a context manager. ``url`` is what to set ``AWS_ENDPOINT_URL`` to."""

    def __init__(self, upstream: str, rules: Iterable[Rule] = (), *, seed: int = 0) -> None:
        parsed = urlparse(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self.rules: list[Rule] = list(rules)
        self.rng = random.Random(seed)
        self.events: list[Event] = []
        self.closed = False
        self._lock = threading.Lock()
        self._ids = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_rules(self, *rules: Rule) -> None:
        """Replace the rules (their counters start from zero)."""
        with self._lock:
            self.rules = list(rules)

    def clear(self) -> None:
        self.set_rules()

    def injected(self, action: str | None = None) -> int:
        """How many requests got a fault (of ``action``, or any)."""
        with self._lock:
            return sum(
                1
                for e in self.events
                if e.action is not None and (action is None or e.action == action)
            )

    def requests(self) -> int:
        with self._lock:
            return len(self.events)

    def _decide(self, method: str, target: str) -> Rule | None:
        with self._lock:
            chosen = None
            for rule in self.rules:
                if not rule.matches(method, target):
                    continue
                if chosen is None and rule.fires(self.rng):
                    chosen = rule
                elif chosen is not None:
                    rule.seen += 1  # counted, not fired: one fault per request
            return chosen

    def _record(self, method: str, target: str, action: str | None, status: int | None) -> None:
        with self._lock:
            self.events.append(Event(method, target, action, status))

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def close(self) -> None:
        self.closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
