"""The base handler: authentication through JupyterHub, JSON in and out, one error path.

Errors answer ``{"error": sentence, "kind": class name}`` with the error's status. An
outage of the database or object storage, and an error whose text is for operators only,
is answered by its stand-in (``hometier.service.outages``): 503 with ``Retry-After`` for
an outage, and a ``reference`` that the one log line with the detail carries too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from hometier.errors import Error, UsageError
from hometier.lifecycle.homes import check_username
from hometier.service.auth import Identity, Unauthorized, identify
from hometier.service.outages import StandIn, StateUnavailable, StorageUnavailable, stand_in

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_JSON = 64 * 1024


def _json_default(o: Any) -> Any:
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


class BaseHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Every API handler: JSON errors, the caller's ``Identity``, blocking work off-loop."""

    public = False
    """True for handlers anyone may call (health)."""

    @property
    def hub_scopes(self) -> None:
        # Every identified caller gets in; each handler checks its own scopes, because
        # the one-spawn restore token has no access:services scope by design.
        return None

    @property
    def ctx(self) -> Any:
        return self.settings["hometier"]

    async def prepare(self) -> None:
        # Identify the caller now, asynchronously (restore tickets without the Hub):
        # ``current_user`` then reads what this stored.
        if not self.public and not hasattr(self, "_hub_auth_user_cache"):
            self._hub_auth_user_cache = await identify(self)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        # Token-authenticated API calls carry no cookie; cookie-authenticated ones from a
        # browser must pass the XSRF check the Hub's helpers implement.
        if self.request.headers.get("Authorization"):
            return
        super().check_xsrf_cookie()

    def identity(self) -> Identity:
        model = self.current_user
        if not model:
            if self._browser_get():
                # A link followed in a browser whose sign-in expired (a download from
                # the dashboard): back through the Hub's login, not a JSON 401.
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.redirect(self.get_login_url())
                raise web.Finish()
            raise Unauthorized()
        return Identity.from_model(model, self.ctx.service_name)

    def _browser_get(self) -> bool:
        return (
            self.request.method == "GET"
            and not self.request.headers.get("Authorization")
            and "text/html" in self.request.headers.get("Accept", "")
        )

    def user_arg(self, user: str) -> str:
        return check_username(user)

    def body(self) -> dict[str, Any]:
        raw = self.request.body or b"{}"
        if len(raw) > MAX_JSON:
            raise UsageError(f"request body is larger than {MAX_JSON} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError("request body must be a JSON object")
        return doc

    def send(self, doc: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(doc, default=_json_default, sort_keys=True))

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.executor, functools.partial(fn, *args, **kwargs))

    def caller_is_admin(self) -> bool:
        """True if the caller, already identified, is a hometier admin (never asks the
        Hub: error pages must render whatever failed)."""
        model = getattr(self, "_current_user", None)
        if not isinstance(model, dict):
            return False
        return Identity.from_model(model, self.ctx.service_name).is_admin

    def error_doc(self, exc: BaseException | None) -> dict[str, Any]:
        """The JSON body of an error answer; sets ``Retry-After`` for an outage."""
        if isinstance(exc, Error):
            doc: dict[str, Any] = {"error": exc.get_message(), "kind": type(exc).__name__}
            if isinstance(exc, StandIn):
                doc["reference"] = exc.ref
                if self.caller_is_admin():
                    doc["detail"] = exc.detail
                if exc.retry_after:
                    self.set_header("Retry-After", str(exc.retry_after))
            return doc
        if isinstance(exc, web.HTTPError):
            return {"error": exc.log_message or self._reason, "kind": "HTTPError"}
        return {"error": self._reason, "kind": "InternalError"}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        doc = self.error_doc(exc)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(doc))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, StandIn):
            # The one line an operator finds by the reference the caller was shown.
            log.log(
                value.log_level,
                "%s %s: %s [reference %s]: %s",
                self.request.method,
                self.request.path,
                type(value).__name__,
                value.ref,
                value.detail,
            )
            return
        if isinstance(value, Error):
            log.info("%s %s: %s", self.request.method, self.request.path, value.get_message())
            return
        super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        public = stand_in(e)
        if public is not None:
            e = public
        health = getattr(self.ctx, "health", None)
        if health is not None and isinstance(e, StateUnavailable | StorageUnavailable):
            # The cached health must not say "ok" about a part a request just found down.
            health.report("database" if isinstance(e, StateUnavailable) else "store", e)
        if isinstance(e, Error):
            self.log_exception(type(e), e, e.__traceback__)
            if not self._finished:
                if self._headers_written:
                    # Too late for an error answer (a stream had begun): cut it short.
                    self.request.connection.stream.close()  # type: ignore[union-attr]
                    return
                self.send_error(e.http_status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)
