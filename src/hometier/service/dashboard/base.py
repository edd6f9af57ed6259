"""What every dashboard page shares: HTML answers, the login redirect, error pages,
the template namespace, one-line flash messages, the static files.

Pages are ``BaseHandler``s (the same Hub OAuth, ``Identity`` and error types as the API)
that answer HTML. A browser without the service's cookie is sent to the Hub's login and
comes back through ``oauth_callback``. Forms carry the Hub's XSRF token
(``xsrf_form_html``): HubOAuth refuses the cookie of a POST whose token does not match.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from tornado import web

from hometier.errors import Error
from hometier.service.api.base import BaseHandler
from hometier.service.auth import Identity
from hometier.service.dashboard.summary import (
    Dashboard,
    ago,
    human_bytes,
    iso,
    money,
    short_id,
    stamp,
    tidy,
)
from hometier.service.outages import StandIn

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
FLASH = "hometier-flash"
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TITLES = {
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    409: "Not now",
    502: "Storage trouble",
    503: "Temporarily unavailable",
}


class AdminOnly(Error):
    """The overview of every home is for hometier's admins (the custom:hometier:admin
    scope), and {} is not one."""

    http_status = 403


class NotAUser(Error):
    """Only a Hub user has a home, and this is a {}."""

    http_status = 403


class FormRefused(Error):
    """This form was not accepted: the sign-in expired or the form did not come from this
    dashboard (XSRF check). Reload the page and try again."""

    http_status = 403


@functools.cache
def _version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def path_query(raw: bytes) -> dict[str, str]:
    """``{"path": …}`` for a UTF-8 path, else ``{"path_b64": …}`` (what the API takes)."""
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path_b64": base64.b64encode(raw).decode()}


class StaticHandler(web.StaticFileHandler):
    """The stylesheet and the small table script; public, like any login page's CSS."""

    def initialize(self) -> None:  # type: ignore[override]
        super().initialize(path=str(STATIC))


class PageHandler(BaseHandler):
    """An HTML page: login redirect, error pages, the template namespace."""

    flash: dict[str, str] | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CSP)

    def get_template_path(self) -> str:
        return str(TEMPLATES)

    @property
    def prefix(self) -> str:
        return str(self.ctx.prefix).rstrip("/")

    @property
    def dashboard(self) -> Dashboard:
        made = self.settings.get("hometier_dashboard")
        return made if isinstance(made, Dashboard) else Dashboard()

    def url(self, *parts: str, **query: str) -> str:
        """A URL under the service's prefix; every part is escaped as one path segment."""
        path = self.prefix + "".join("/" + quote(p, safe="") for p in parts)
        return path + ("?" + urlencode(query) if query else "")

    def _signed_in(self) -> tuple[str | None, bool]:
        try:
            model = self.current_user
        except Exception:  # noqa: BLE001 - an error page must render without a user
            return None, False
        if not model:
            return None, False
        who = Identity.from_model(model, self.ctx.service_name)
        return who.name, who.is_admin

    def get_template_namespace(self) -> dict[str, Any]:
        ns = super().get_template_namespace()
        now = self.ctx.lc.now()
        me, me_admin = self._signed_in()
        auth = self.settings.get("hub_auth")
        hub = (auth.hub_host + auth.hub_prefix) if auth is not None else "/hub/"
        ns.update(
            url=self.url,
            home_url=self.prefix + "/",
            static=lambda name: f"{self.prefix}/static/{name}?v={_version(name)}",
            human=human_bytes,
            money=money,
            stamp=stamp,
            iso=iso,
            short_id=short_id,
            tidy=tidy,
            ago=lambda when: ago(when, now),
            hub_logo=hub + "logo",
            xsrf_token=self.xsrf_token.decode(),
            hub_logout=hub + "logout",
            health=None,
            me=me,
            me_admin=me_admin,
            hub_url=hub,
            flash=self.flash,
            refresh=None,
        )
        return ns

    # --- flash messages: one line shown on the page an action redirects to ----------

    def set_flash(self, kind: str, text: str) -> None:
        value = json.dumps({"kind": kind, "text": text[:800]})  # a cookie holds 4 kB
        self.set_secure_cookie(
            FLASH, value, expires_days=None, path=self.prefix + "/", httponly=True, samesite="Lax"
        )

    def take_flash(self) -> None:
        raw = self.get_secure_cookie(FLASH, max_age_days=1)
        if raw is None:
            return
        self.clear_cookie(FLASH, path=self.prefix + "/")
        try:
            doc = json.loads(raw)
            self.flash = {"kind": str(doc["kind"]), "text": str(doc["text"])}
        except (ValueError, KeyError, TypeError):
            self.flash = None

    # --- errors as pages ------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        detail = None
        if isinstance(exc, StandIn):
            # An outage or an error whose text is for operators: its words, the reference.
            message = exc.get_message()
            detail = exc.detail if self.caller_is_admin() else None
            if exc.retry_after:
                self.set_header("Retry-After", str(exc.retry_after))
        elif isinstance(exc, Error):
            message = exc.get_message()
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code < 500:
            message = self._reason
        else:
            message = "Something went wrong inside hometier; the service's log says what."
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.render(
            "error.html",
            status=status_code,
            title=TITLES.get(status_code, "Error"),
            message=message,
            detail=detail,
        )
