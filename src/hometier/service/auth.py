"""Who is calling, and what may they do to whose home."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jupyterhub.services.auth import check_scopes

from hometier.errors import Error
from hometier.scopes import ADMIN, LEASE, READ, RESTORE

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
