"""The JupyterHub REST calls a run makes: servers, per-run tokens, activity.

The service's own token (``c.Archiver.hub_api_token``) needs, besides what the archiver
uses, ``tokens`` (mint and revoke per-run tokens for users). Everything done *on* a
user's behalf uses a token minted for that run alone (``run_scopes``): it can start,
stop, reach and report activity for one server of that user, and expires with the
run's timeout. Starting the server through the Hub API means it works with every
spawner; the Hub applies its own limits (named servers allowed, how many per user).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hometier.errors import Error

log = logging.getLogger(__name__)


class HubCallFailed(Error):
    """JupyterHub answered {} to {} {}: {}"""

    exit_code = 6
    http_status = 502

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(status, method, path, message)
        self.status = status
        self.message = message


class SpawnFailed(Error):
    """The server {} could not be started: {}"""

    exit_code = 7
    http_status = 502


@dataclass(frozen=True)
class Minted:
    token: str
    id: str


def server_path(user: str, name: str) -> str:
    u = urllib.parse.quote(user, safe="")
    return (
        f"/users/{u}/servers/{urllib.parse.quote(name, safe='')}" if name else f"/users/{u}/server"
    )


def run_scopes(user: str, server: str) -> list[str]:
    """What a run's token may do: one server of one user, and report its activity."""
    target = f"{user}/{server}"
    return [
        f"servers!server={target}",
        f"access:servers!server={target}",
        f"read:servers!server={target}",
        f"users:activity!user={user}",
    ]


class HubAPI:
    """Async calls to the Hub at ``api_url`` (``…/hub/api``); servers are reached through
    ``proxy_url`` (the Hub's public address, where ``/user/<name>/…`` routes)."""

    def __init__(
        self, api_url: str, token: str, proxy_url: str, *, request_timeout: float = 30.0
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.proxy_url = proxy_url.rstrip("/")
        self.request_timeout = request_timeout

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={
                "Authorization": f"token {token or self.token}",
                "Content-Type": "application/json",
            },
            body=json.dumps(body) if body is not None else ("" if method == "POST" else None),
            request_timeout=self.request_timeout,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as exc:
            message = ""
            if exc.response is not None and exc.response.body:
                try:
                    message = str(json.loads(exc.response.body).get("message", ""))
                except (ValueError, AttributeError):
                    message = exc.response.body.decode(errors="replace")[:300]
            raise HubCallFailed(exc.code, method, path, message or str(exc)) from None
        except OSError as exc:
            raise HubCallFailed(0, method, path, str(exc)) from None
        return resp.code, (json.loads(resp.body) if resp.body else None)

    async def servers(self, user: str) -> dict[str, dict[str, Any]]:
        """The user's servers that are running or pending, by name (``""``: default)."""
        path = "/users/" + urllib.parse.quote(user, safe="")
        _, model = await self.call("GET", path)
        return dict((model or {}).get("servers") or {})

    async def mint(self, user: str, scopes: list[str], expires_in: int, note: str) -> Minted:
        path = f"/users/{urllib.parse.quote(user, safe='')}/tokens"
        body = {"note": note, "expires_in": max(60, int(expires_in)), "scopes": scopes}
        _, doc = await self.call("POST", path, body)
        return Minted(token=str(doc["token"]), id=str(doc["id"]))

    async def revoke(self, user: str, token_id: str) -> None:
        path = f"/users/{urllib.parse.quote(user, safe='')}/tokens/{token_id}"
        try:
            await self.call("DELETE", path)
        except HubCallFailed as exc:
            if exc.status != 404:
                raise

    async def start(
        self, user: str, name: str, options: dict[str, Any], token: str, timeout: float
    ) -> dict[str, Any]:
        """Start ``user``'s server ``name`` with ``options`` (the spawner's user_options)
        and wait until the Hub says it is ready; returns its model. ``SpawnFailed`` with
        the Hub's own words when the Hub refuses it or the spawn fails."""
        try:
            await self.call("POST", server_path(user, name), options, token=token)
        except HubCallFailed as exc:
            raise SpawnFailed(name or "(default)", exc.message) from None
        deadline = time.monotonic() + timeout
        seen_pending = False
        while True:
            server = (await self.servers(user)).get(name)
            if server and server.get("ready"):
                return server
            if server is not None:
                seen_pending = True
            elif seen_pending or time.monotonic() > deadline - timeout + 10:
                raise SpawnFailed(name or "(default)", await self._failure(user, name, token))
            if time.monotonic() > deadline:
                raise SpawnFailed(name or "(default)", f"not ready within {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def _failure(self, user: str, name: str, token: str) -> str:
        """The Hub's message for a failed spawn (its progress stream's last event)."""
        req = HTTPRequest(
            self.api_url + server_path(user, name) + "/progress",
            headers={"Authorization": f"token {token}"},
            request_timeout=5,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except OSError:
            return "the spawn failed"
        message = "the spawn failed"
        for line in resp.body.decode(errors="replace").splitlines():
            if line.startswith("data:"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                if event.get("failed") or event.get("message"):
                    message = str(event.get("message") or message)
        return message

    async def stop(self, user: str, name: str, token: str, *, remove: bool, timeout: float) -> None:
        """Stop (and with ``remove`` delete) a server and wait until it is gone."""
        body = {"remove": True} if remove and name else None
        try:
            await self.call("DELETE", server_path(user, name), body, token=token)
        except HubCallFailed as exc:
            if exc.status not in (400, 404):
                raise
        deadline = time.monotonic() + timeout
        while name in await self.servers(user):
            if time.monotonic() > deadline:
                raise HubCallFailed(0, "DELETE", server_path(user, name), "still running")
            await asyncio.sleep(0.5)
        if remove and name:
            try:  # a stopped named server is still listed by the Hub until removed
                await self.call("DELETE", server_path(user, name), {"remove": True}, token=token)
            except HubCallFailed as exc:
                if exc.status not in (400, 404):
                    raise

    async def activity(self, user: str, name: str, token: str, when: str) -> None:
        """Tell the Hub (and so the idle culler) that server ``name`` is in use. Only the
        server's activity, not the user's: the run must not look like a login."""
        path = f"/users/{urllib.parse.quote(user, safe='')}/activity"
        await self.call("POST", path, {"servers": {name: {"last_activity": when}}}, token=token)

    def server_url(self, server: dict[str, Any]) -> str:
        return self.proxy_url + str(server.get("url") or "/")
