"""Who is calling, and what may they do to whose home."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.services.auth import UserNotAllowed, check_scopes

from hometier.errors import Error
from hometier.scopes import ADMIN, LEASE, READ, RESTORE
from hometier.tickets import is_ticket, ticket_model, verify_ticket

_BEARER = re.compile(r"^(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)

# What each action needs besides being the home's own user with service access.
ACTION_SCOPES: dict[str, tuple[str, ...]] = {
    "read": (READ, ADMIN),
    "restore": (RESTORE, ADMIN),
    "lease": (LEASE, ADMIN),
    "admin": (ADMIN,),
}
# Actions a user may take on their own home with plain access to the service.
OWN_HOME_ACTIONS = frozenset({"read", "restore", "lease"})


class Unauthorized(Error):
    """Authentication required: send a JupyterHub token (Authorization: token ...)."""

    exit_code = 2
    http_status = 401


class Forbidden(Error):
    """{} may not {} the home of {}."""

    exit_code = 2
    http_status = 403


@dataclass(frozen=True)
class Identity:
    """A caller as the Hub describes it (a user or a service) and its token's scopes."""

    name: str
    kind: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    service_name: str = "hometier"

    @classmethod
    def from_model(cls, model: dict[str, Any], service_name: str) -> Identity:
        return cls(
            name=str(model.get("name", "")),
            kind=str(model.get("kind", "user")),
            scopes=frozenset(model.get("scopes", [])),
            service_name=service_name,
        )

    def _has(self, scope: str, user: str | None) -> bool:
        wanted = f"{scope}!user={user}" if user is not None else scope
        return bool(check_scopes({wanted}, self.scopes))

    @property
    def is_admin(self) -> bool:
        return self._has(ADMIN, None)

    def may(self, action: str, user: str | None) -> bool:
        """True if this caller may take ``action`` on ``user``'s home (None: all homes)."""
        if any(self._has(s, user) for s in ACTION_SCOPES[action]):
            return True
        if user is None or action not in OWN_HOME_ACTIONS:
            return False
        own = self.kind == "user" and self.name == user
        access = f"access:services!service={self.service_name}"
        return own and bool(check_scopes({access}, self.scopes))

    def require(self, action: str, user: str | None) -> None:
        if not self.may(action, user):
            raise Forbidden(self.name or "this token", action, user or "every user")


def bearer(headers: Any) -> str | None:
    """The token of an ``Authorization: token …`` (or ``bearer``) header."""
    m = _BEARER.match(headers.get("Authorization", ""))
    return m.group(1) if m else None


async def identify(handler: Any) -> dict[str, Any] | None:
    """The caller of ``handler`` as the Hub describes it, or None; never blocks the
    event loop.

    A restore ticket (``hometier.tickets``) is checked here with one HMAC. Anything else
    goes to the Hub through ``HubOAuth.get_user(sync=False)`` (cached ``cache_max_age``
    seconds): the synchronous path that ``HubOAuthenticated.get_current_user`` takes
    would hold the whole service while the Hub answers, one token after the other.
    """
    token = bearer(handler.request.headers)
    if token is not None and is_ticket(token):
        user = verify_ticket(handler.hub_auth.api_token or "", token)
        return ticket_model(user) if user is not None else None
    model = await handler.hub_auth.get_user(handler, sync=False)
    if not model:
        return None
    try:
        checked: dict[str, Any] = handler.check_hub_user(model)
    except UserNotAllowed:
        return None
    return checked


def hub_auth_defaults(
    prefix: str, hub_api_url: str = "", token: str = "", service_name: str = "hometier"
) -> dict[str, Any]:
    """``HubOAuth`` settings the environment does not give.

    A service the Hub starts (managed) gets ``JUPYTERHUB_*`` variables from it; one the
    operator starts (systemd, another host) usually has only ``HOMETIER_HUB_TOKEN`` and
    the Hub API URL of its archiver. Without these defaults its dashboard sign-in failed
    ("Missing client_id parameter") and its token checks went to the default Hub address.
    """
    env = os.environ
    kw: dict[str, Any] = {}
    if not env.get("JUPYTERHUB_API_TOKEN") and token:
        kw["api_token"] = token
    if not env.get("JUPYTERHUB_API_URL") and hub_api_url:
        kw["api_url"] = hub_api_url
    if not env.get("JUPYTERHUB_CLIENT_ID"):
        kw["oauth_client_id"] = f"service-{service_name}"
    if not env.get("JUPYTERHUB_SERVICE_PREFIX"):
        kw["base_url"] = prefix.rstrip("/") + "/"
    scopes_given = env.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES") or env.get("JUPYTERHUB_OAUTH_SCOPES")
    if not env.get("JUPYTERHUB_SERVICE_NAME") and not scopes_given:
        kw["access_scopes"] = {f"access:services!service={service_name}"}
    return kw
