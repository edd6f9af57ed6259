"""Restore a home before a local spawner starts its server, with progress on the spawn page.

Two ways to use it (``docs/howto/local-spawners.md``):

- ``c.Spawner.pre_spawn_hook = make_pre_spawn_hook("http://127.0.0.1:8765")``; or
- ``c.JupyterHub.spawner_class = make_spawner_class(LocalProcessSpawner)`` (a mixin
  that does the same and also shows "Restoring your files: 120 of 300 MB" on the spawn
  progress page).

The hook mints a one-spawn token (``tokens.mint_restore_token``), asks the service to
restore (a second login joins the first), follows it, and fails the spawn with a message
the user can act on if it fails. It never touches object storage itself.

What the user reads (spawn page, progress) is the service's sentence, which names no
bucket, key or path, with its reference; an unreachable service gets a reference of the
hook's own, logged in the Hub's log with the detail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.web import HTTPError
from traitlets import Float, Unicode
from traitlets.config import Configurable

from hometier.hub.tokens import mint_restore_token

POLL = 0.5
DEFAULT_TIMEOUT = 600.0
UNREACHABLE = 599
"""tornado's code for "no HTTP answer" (refused, reset, timed out)."""

log = logging.getLogger(__name__)

Hook = Callable[[Any], Awaitable[None]]


async def _call(method: str, url: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
    req = HTTPRequest(
        url,
        method=method,
        headers={"Authorization": f"token {token}"},
        body=b"{}" if method == "POST" else None,
        request_timeout=timeout,
    )
    resp = await AsyncHTTPClient().fetch(req)
    doc: dict[str, Any] = json.loads(resp.body or b"{}")
    return doc


def _error_text(exc: HTTPClientError) -> str:
    try:
        return str(json.loads(exc.response.body)["error"])  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - any unreadable answer
        return f"the file restore service answered HTTP {exc.code}"


def _unreachable(spawner: Any, exc: BaseException) -> HTTPError:
    """The spawn's error when the service gave no answer; the detail goes to the log."""
    ref = secrets.token_hex(4)
    logger = getattr(spawner, "log", None) or log
    logger.warning("hometier: restore service unreachable [reference %s]: %r", ref, exc)
    return HTTPError(
        503,
        "Your files could not be restored: the file restore service is unreachable. "
        f"They are safe in the archive; please try again shortly (reference {ref}).",
    )


def _error_kind(exc: HTTPClientError) -> str:
    try:
        return str(json.loads(exc.response.body)["kind"])  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a wrong URL answers something else
        return ""


async def restore_before_spawn(
    spawner: Any, service_url: str, *, timeout: float = DEFAULT_TIMEOUT, token_ttl: int = 900
) -> dict[str, Any]:
    """Ask the service to restore ``spawner.user``'s home and wait until it is done.

    Progress goes to ``spawner._hometier_progress`` (read by the mixin's ``progress``).
    Raises ``tornado.web.HTTPError(503, message)`` when the restore fails or times out,
    which JupyterHub shows to the user.
    """
    name = spawner.user.name
    base = f"{service_url.rstrip('/')}/api/homes/{quote(name, safe='')}/restore"
    state: dict[str, Any] = {"progress": 0, "message": "Checking your files"}
    spawner._hometier_progress = state
    token = mint_restore_token(spawner, token_ttl)
    deadline = time.monotonic() + timeout
    try:
        doc = await _call("POST", base, token)
        while doc.get("state") == "running":
            if time.monotonic() > deadline:
                raise HTTPError(
                    503,
                    "Restoring your files is taking too long; please try again in a few minutes.",
                )
            state.update(
                progress=doc.get("progress") or 0,
                message=doc.get("message") or "Restoring your files",
            )
            await asyncio.sleep(POLL)
            doc = await _call("GET", base, token)
    except HTTPClientError as exc:
        if exc.code == 404 and _error_kind(exc) in ("HomeNotFound", "SnapshotNotFound"):
            state.update(progress=100, message="No archived files to restore", done=True)
            return {"state": "done"}
        if exc.code == UNREACHABLE:
            failed = _unreachable(spawner, exc)
        else:
            text = _error_text(exc).rstrip(".")
            failed = HTTPError(
                503, f"Your files could not be restored: {text[:1].lower()}{text[1:]}."
            )
        state.update(message=failed.log_message, failed=True)
        raise failed from exc
    except OSError as exc:
        failed = _unreachable(spawner, exc)
        state.update(message=failed.log_message, failed=True)
        raise failed from exc
    if doc.get("state") == "failed":
        message = doc.get("message") or "Your files could not be restored."
        state.update(message=message, failed=True)
        raise HTTPError(503, message)
    state.update(progress=100, message=doc.get("message") or "Your files are ready", done=True)
    return doc


def make_pre_spawn_hook(
    service_url: str, *, timeout: float = DEFAULT_TIMEOUT, chain: Hook | None = None
) -> Hook:
    """A ``pre_spawn_hook`` that restores first, then runs ``chain`` (an earlier hook)."""

    async def hook(spawner: Any) -> None:
        await restore_before_spawn(spawner, service_url, timeout=timeout)
        if chain is not None:
            result = chain(spawner)
            if asyncio.iscoroutine(result):
                await result

    return hook


class HometierSpawnerMixin(Configurable):
    """Restores before ``start()`` and reports restore progress on the spawn page."""

    hometier_url = Unicode(
        "http://127.0.0.1:8765", help="URL of the hometier service (direct, not through the proxy)."
    ).tag(config=True)
    hometier_timeout = Float(
        DEFAULT_TIMEOUT, help="Seconds a restore may take before the spawn fails."
    ).tag(config=True)

    async def start(self) -> Any:
        await restore_before_spawn(self, self.hometier_url, timeout=self.hometier_timeout)
        return await super().start()  # type: ignore[misc]

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        last = None
        while True:
            state = getattr(self, "_hometier_progress", None)
            if state is not None:
                event = {
                    "progress": min(int(state.get("progress") or 0) // 2, 50),
                    "message": state.get("message", ""),
                }
                if event != last:
                    last = event
                    yield event
                if state.get("done"):
                    break
            await asyncio.sleep(POLL)
        async for event in super().progress():  # type: ignore[misc]
            yield event


def make_spawner_class(base: type) -> type:
    """``base`` with restore-before-start: ``make_spawner_class(LocalProcessSpawner)``."""
    return type(f"Hometier{base.__name__}", (HometierSpawnerMixin, base), {"__module__": __name__})
