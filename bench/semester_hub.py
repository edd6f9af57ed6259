"""A stand-in for JupyterHub's REST API that answers from the login trace, on 127.0.0.1.

No real JupyterHub can replay a semester in minutes (its clock is the wall clock, and
spawning thousands of servers is not the point), so this small HTTP server serves the
part of the Hub's API that hometier reads, in the Hub's own shapes:

- ``GET /hub/api/users`` (paginated with ``offset``/``limit``; the
  ``application/jupyterhub-pagination+json`` envelope when asked for) and
  ``GET /hub/api/users/<name>``: each user with ``last_activity`` and, while a session
  of the trace is running at the virtual time, a running default server in
  ``servers`` — what the archiver's ``HubClient`` reads;
- ``GET /hub/api/user``: the owner of the token in the ``Authorization`` header and the
  token's scopes, as ``HubAuth`` asks to authenticate a request to the service. Each
  login gets a token of its own holding ``custom:hometier:restore!user=<name>`` (what the
  spawn hook mints); the benchmark's admin token holds ``custom:hometier:admin``.

Requests without the service's token on ``/users`` get 403, like the Hub's.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RESTORE = "custom:hometier:restore"
ADMIN = "custom:hometier:admin"


@dataclass
class HubUserState:
    last_activity: dt.datetime | None
    running_until: dt.datetime | None = None
    started: dt.datetime | None = None


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t else None


class FakeHub:
    """The Hub's users at the virtual time ``clock()``; see the module doc."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self.users: dict[str, HubUserState] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.service_token = secrets.token_hex(16)
        self.admin_token = self.new_token("hometier-bench", [ADMIN], kind="service")
        self.requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hub/api"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, users: dict[str, dt.datetime | None]) -> None:
        """Users known before the semester and their last activity."""
        with self.lock:
            self.users = {u: HubUserState(t) for u, t in users.items()}
            self.tokens = {self.admin_token: self.tokens[self.admin_token]}

    def start_session(self, user: str, start: dt.datetime, end: dt.datetime) -> None:
        with self.lock:
            st = self.users.setdefault(user, HubUserState(None))
            st.started, st.running_until = start, end
            st.last_activity = max(st.last_activity or start, start)

    def new_token(self, name: str, scopes: list[str], kind: str = "user") -> str:
        token = secrets.token_hex(16)
        self.tokens[token] = {"kind": kind, "name": name, "scopes": scopes}
        return token

    def login_token(self, user: str) -> str:
        """A one-login token, as the spawn hook mints (the restore scope for that user)."""
        with self.lock:
            return self.new_token(user, [f"{RESTORE}!user={user}"])

    def last_activity(self, user: str, now: dt.datetime) -> dt.datetime | None:
        st = self.users.get(user)
        if st is None:
            return None
        return self._model(user, st, now)[1]

    def _model(
        self, name: str, st: HubUserState, now: dt.datetime
    ) -> tuple[dict[str, Any], dt.datetime | None]:
        running = (
            st.running_until is not None
            and st.started is not None
            and (st.started <= now < st.running_until)
        )
        last = st.last_activity
        if st.running_until is not None and st.started is not None and st.started <= now:
            # The Hub moves last_activity while a server is in use, up to its end.
            last = max(last or now, min(now, st.running_until))
        servers: dict[str, Any] = {}
        if running:
            servers[""] = {
                "name": "",
                "ready": True,
                "pending": None,
                "started": _iso(st.started),
                "last_activity": _iso(last),
                "url": f"/user/{name}/",
            }
        doc = {
            "kind": "user",
            "name": name,
            "admin": False,
            "last_activity": _iso(last),
            "server": f"/user/{name}/" if running else None,
            "pending": None,
            "servers": servers,
        }
        return doc, last

    def _users_page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        now = self.clock()
        with self.lock:
            names = sorted(self.users)
            page = names[offset : offset + limit]
            return [self._model(n, self.users[n], now)[0] for n in page], len(names)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _token(self) -> str:
                auth = self.headers.get("Authorization", "")
                kind, _, value = auth.partition(" ")
                return value.strip() if kind.lower() in ("token", "bearer") else ""

            def do_GET(self) -> None:  # noqa: N802
                hub.requests += 1
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                path = url.path.rstrip("/")
                token = self._token()
                if path == "/hub/api/user":
                    model = hub.tokens.get(token)
                    if model is None:
                        return self._send(403, {"status": 403, "message": "bad token"})
                    return self._send(200, dict(model))
                if token != hub.service_token:
                    return self._send(403, {"status": 403, "message": "Forbidden"})
                if path == "/hub/api/users":
                    offset = int(query.get("offset", 0))
                    limit = min(200, int(query.get("limit", 200)))
                    items, total = hub._users_page(offset, limit)
                    if "pagination" not in self.headers.get("Accept", ""):
                        return self._send(200, items)
                    nxt = None
                    if offset + len(items) < total:
                        nxt = {"offset": offset + len(items), "limit": limit, "url": "..."}
                    page = {"offset": offset, "limit": limit, "total": total, "next": nxt}
                    return self._send(200, {"items": items, "_pagination": page})
                if path.startswith("/hub/api/users/"):
                    name = urllib.parse.unquote(path[len("/hub/api/users/") :])
                    with hub.lock:
                        st = hub.users.get(name)
                        doc = hub._model(name, st, hub.clock())[0] if st else None
                    if doc is None:
                        return self._send(404, {"status": 404, "message": "no such user"})
                    return self._send(200, doc)
                return self._send(404, {"status": 404, "message": "not here"})

        return Handler
