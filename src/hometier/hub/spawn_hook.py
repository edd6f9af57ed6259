"""Restore a home before a local spawner starts its server, with progress on the spawn page.

``configure_hub`` installs ``make_pre_spawn_hook(...)`` as ``c.Spawner.pre_spawn_hook``:
for each spawn it authorizes this one restore (a ticket signed with the service's token,
``hometier.tickets``, or else a one-spawn Hub token), asks the service to restore (a
second login, or a retried request, joins the first), follows the restore's event stream
(one connection and one authorization per login, not a poll every half second), and
fails the spawn with a message the user can act on if it fails. It also puts "Restoring
your files: 120 of 300 MB" on the spawn page: the hook gives this spawner a ``progress``
that shows the restore first, then the spawner's own events. It never touches object
storage itself.

``make_spawner_class(LocalProcessSpawner)`` (the ``HometierSpawnerMixin``) does the same
from ``start()`` instead, for those who prefer a spawner class to a hook.

What the user reads (spawn page, progress) is the service's sentence, which names no
bucket, key or path, with its reference; an unreachable service gets a reference of the
hook's own, logged in the Hub's log with the detail.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPClientError
from tornado.web import HTTPError
from traitlets import Float, Unicode
from traitlets.config import Configurable

from hometier.hub import events
from hometier.hub.events import UNREACHABLE, Retry, StreamEnded
from hometier.hub.tokens import mint_restore_token
from hometier.tickets import mint_ticket

POLL = 0.5
DEFAULT_TIMEOUT = 600.0
NOTHING_TO_RESTORE = frozenset({"HomeNotFound", "SnapshotNotFound", "NothingToRestore"})

log = logging.getLogger(__name__)

Hook = Callable[[Any], Awaitable[None]]


def _error_doc(exc: HTTPClientError) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(exc.response.body)  # type: ignore[union-attr]
        return doc if isinstance(doc, dict) else {}
    except Exception:  # noqa: BLE001 - any unreadable answer
        return {}


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


def _too_long(state: dict[str, Any]) -> HTTPError:
    failed = HTTPError(
        503, "Restoring your files is taking too long; please try again in a few minutes."
    )
    state.update(message=failed.log_message, failed=True)
    return failed


def _authorize(spawner: Any, secret: str | None, ttl: int) -> str:
    """A ticket when the service's token is known here (no Hub round trip for the
    service to check it), else a one-spawn Hub token."""
    if secret:
        return mint_ticket(secret, spawner.user.name, ttl)
    return mint_restore_token(spawner, ttl)


async def restore_before_spawn(
    spawner: Any,
    service_url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    token_ttl: int = 900,
    secret: str | None = None,
    retry_for: float = 120.0,
) -> dict[str, Any]:
    """Ask the service to restore ``spawner.user``'s home and wait until it is done.

    Progress goes to ``spawner._hometier_progress`` (read by ``progress``). Raises
    ``tornado.web.HTTPError(503, message)`` when the restore fails or times out, which
    JupyterHub shows to the user. ``secret`` is the service's Hub API token (restore
    tickets); without it a Hub token is minted for this spawn.
    """
    name = spawner.user.name
    base = f"{service_url.rstrip('/')}/api/homes/{quote(name, safe='')}/restore"
    state: dict[str, Any] = {"progress": 0, "message": "Checking your files"}
    spawner._hometier_progress = state
    token = _authorize(spawner, secret, token_ttl)
    deadline = time.monotonic() + timeout
    retry = Retry(deadline, retry_for=retry_for)
    try:
        doc = await _run(base, token, state, deadline, retry)
    except HTTPClientError as exc:
        if time.monotonic() >= deadline:
            raise _too_long(state) from exc
        err = _error_doc(exc)
        if exc.code == 404 and err.get("kind") in NOTHING_TO_RESTORE:
            state.update(progress=100, message="No archived files to restore", done=True)
            return {"state": "done"}
        if exc.code in events.RETRYABLE and not err.get("error"):
            failed = _unreachable(spawner, exc)
        else:
            text = str(err.get("error") or f"the file restore service answered HTTP {exc.code}")
            text = text.rstrip(".")
            failed = HTTPError(
                503, f"Your files could not be restored: {text[:1].lower()}{text[1:]}."
            )
        state.update(message=failed.log_message, failed=True)
        raise failed from exc
    except TimeoutError as exc:
        raise _too_long(state) from exc
    if doc.get("state") == "failed":
        message = doc.get("message") or "Your files could not be restored."
        state.update(message=message, failed=True)
        raise HTTPError(503, message)
    state.update(progress=100, message=doc.get("message") or "Your files are ready", done=True)
    return doc


async def _run(
    base: str, token: str, state: dict[str, Any], deadline: float, retry: Retry
) -> dict[str, Any]:
    """Request the restore, then follow it to its end; a stream that breaks is reopened
    after the request is repeated (it joins the restore that runs)."""
    final: dict[str, Any] = {}

    def on_event(doc: dict[str, Any]) -> bool:
        if doc.get("state") == "running":
            progress = doc.get("progress")
            state.update(
                progress=progress if progress is not None else state.get("progress", 0),
                message=doc.get("message") or "Restoring your files",
            )
            return False
        final.clear()
        final.update(doc)
        return True

    polling = False
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        doc = await events.call("POST", base, token, retry)
        if on_event(doc) and final.get("state") != "idle":
            return final
        try:
            if polling:
                await _poll(base, token, on_event, deadline, retry)
            else:
                await events.follow(f"{base}/events", token, on_event, deadline)
        except StreamEnded:
            await asyncio.sleep(POLL)  # never a tight loop against a service that hangs up
            continue
        except HTTPClientError as exc:
            if exc.code in (404, 405) and not _error_doc(exc).get("kind"):
                polling = True  # a service from before the event stream: poll it
                continue
            if exc.code in events.RETRYABLE and await retry.wait(exc):
                continue
            raise
        if final.get("state") == "idle":
            # Nothing runs here for this home (another replica's restore just ended):
            # asking again says where it stands.
            await asyncio.sleep(POLL)
            continue
        return final


async def _poll(
    base: str,
    token: str,
    on_event: Callable[[dict[str, Any]], bool],
    deadline: float,
    retry: Retry,
) -> None:
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        if on_event(await events.call("GET", base, token, retry)):
            return
    raise TimeoutError


async def restore_progress(spawner: Any) -> AsyncIterator[dict[str, Any]]:
    """The restore's events for the spawn page (half the bar), until it is done."""
    last = None
    while True:
        state = getattr(spawner, "_hometier_progress", None)
        if state is not None:
            event = {
                "progress": min(int(state.get("progress") or 0) // 2, 50),
                "message": state.get("message", ""),
            }
            if event != last:
                last = event
                yield event
            if state.get("done") or state.get("failed"):
                return
        await asyncio.sleep(POLL)


def show_progress(spawner: Any) -> None:
    """Give this spawner a ``progress`` that streams the restore before its own events
    (JupyterHub reads ``spawner.progress()`` for the spawn page). Idempotent."""
    if getattr(spawner, "_hometier_progress_installed", False):
        return
    own = spawner.progress

    async def progress() -> AsyncIterator[dict[str, Any]]:
        async for event in restore_progress(spawner):
            yield event
        async for event in own():
            yield event

    spawner.progress = progress
    spawner._hometier_progress_installed = True


def make_pre_spawn_hook(
    service_url: str | Callable[[Any], str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    chain: Hook | None = None,
    secret: str | Callable[[], str | None] | None = None,
    token_ttl: int = 900,
) -> Hook:
    """A ``pre_spawn_hook`` that restores first (with progress on the spawn page), then
    runs ``chain`` (an earlier hook). ``service_url`` may be a function of the spawner;
    ``secret``: the service's API token, or a function that finds it when the first spawn
    comes (see ``restore_before_spawn``)."""

    async def hook(spawner: Any) -> None:
        show_progress(spawner)
        key = secret() if callable(secret) else secret
        url = service_url(spawner) if callable(service_url) else service_url
        await restore_before_spawn(spawner, url, timeout=timeout, token_ttl=token_ttl, secret=key)
        if chain is not None:
            result = chain(spawner)
            if asyncio.iscoroutine(result):
                await result

    return hook


class HometierSpawnerMixin(Configurable):
    """Restores before ``start()`` and reports restore progress on the spawn page."""

    hometier_url = Unicode(
        "http://127.0.0.1:8765/services/hometier",
        help="URL of the hometier service (direct, not through the proxy), with its prefix.",
    ).tag(config=True)
    hometier_timeout = Float(
        DEFAULT_TIMEOUT, help="Seconds a restore may take before the spawn fails."
    ).tag(config=True)
    hometier_api_token = Unicode(
        "",
        help=(
            "The hometier service's Hub API token: restores are then authorized with "
            "tickets the service checks itself. Empty: a Hub token is minted per spawn."
        ),
    ).tag(config=True)

    async def start(self) -> Any:
        await restore_before_spawn(
            self,
            self.hometier_url,
            timeout=self.hometier_timeout,
            secret=self.hometier_api_token or None,
        )
        return await super().start()  # type: ignore[misc]

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        async for event in restore_progress(self):
            yield event
        async for event in super().progress():  # type: ignore[misc]
            yield event


def make_spawner_class(base: type) -> type:
    """``base`` with restore-before-start: ``make_spawner_class(LocalProcessSpawner)``."""
    return type(f"Hometier{base.__name__}", (HometierSpawnerMixin, base), {"__module__": __name__})


__all__ = [
    "UNREACHABLE",
    "HometierSpawnerMixin",
    "make_pre_spawn_hook",
    "make_spawner_class",
    "restore_before_spawn",
    "show_progress",
]
