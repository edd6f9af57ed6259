"""Who may read and write a space: declared members expanded through JupyterHub groups.

JupyterHub's groups are the source of truth. ``HubGroups`` reads them (and which users
exist) from the Hub's REST API with a token holding ``list:groups``, ``read:groups`` and
``list:users``; ``effective_access`` is pure: declared members, the owner and the Hub's
groups in, user → role out.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hometier.errors import Error

PAGE = 200
RANK = {"reader": 1, "writer": 2}


class HubGroupsUnavailable(Error):
    """JupyterHub's groups at {} could not be read: {}"""

    exit_code = 6
    http_status = 503


@dataclass(frozen=True)
class HubView:
    """What the Hub says now: each group's users, and every user's name."""

    groups: Mapping[str, frozenset[str]]
    users: frozenset[str]
    running: frozenset[str] = frozenset()
    """Users with a server up, starting or stopping (default or named)."""


class HubGroups:
    """A least-privilege reader of ``/hub/api/groups`` and ``/hub/api/users``."""

    def __init__(self, api_url: str, token: str, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _pages(self, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            query = urllib.parse.urlencode({"offset": offset, "limit": PAGE})
            req = urllib.request.Request(
                f"{self.api_url}{path}?{query}",
                headers={
                    "Authorization": f"token {self.token}",
                    "Accept": "application/jupyterhub-pagination+json",
                },
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    doc = json.load(resp)
            except urllib.error.HTTPError as exc:
                raise HubGroupsUnavailable(self.api_url, f"HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise HubGroupsUnavailable(self.api_url, str(exc)) from exc
            items = doc["items"] if isinstance(doc, dict) else doc
            out.extend(items)
            nxt = doc.get("_pagination", {}).get("next") if isinstance(doc, dict) else None
            if not nxt or not items:
                return out
            offset = int(nxt.get("offset", offset + len(items)))

    def view(self) -> HubView:
        groups = {}
        for g in self._pages("/groups"):
            if "users" not in g:
                raise HubGroupsUnavailable(self.api_url, "the token lacks the read:groups scope")
            groups[str(g["name"])] = frozenset(str(u) for u in g.get("users") or [])
        users = self._pages("/users")
        running = frozenset(str(u["name"]) for u in users if _running(u))
        return HubView(groups, frozenset(str(u["name"]) for u in users), running)


def _running(u: dict[str, Any]) -> bool:
    if u.get("server") or u.get("pending"):
        return True
    servers = u.get("servers") or {}
    return any(s.get("ready") or s.get("pending") or s.get("started") for s in servers.values())


def effective_access(
    owner: str,
    declared: Iterable[tuple[str, str, str]],
    hub: HubView | None,
) -> dict[str, str]:
    """User → ``reader``/``writer`` for one space.

    ``declared`` holds (kind, name, role) triples; the owner always writes. A user in
    several of the space's groups gets the strongest role. With ``hub``, group members
    come from it and users the Hub no longer knows are left out (a deleted account keeps
    nothing); without it (the Hub is unreachable) groups expand to nobody — callers must
    then not apply the result (see ``reconcile``).
    """
    out: dict[str, str] = {}

    def grant(user: str, role: str) -> None:
        if hub is not None and user not in hub.users:
            return
        if RANK[role] > RANK.get(out.get(user, ""), 0):
            out[user] = role

    for kind, name, role in declared:
        if kind == "user":
            grant(name, role)
        elif hub is not None:
            for user in sorted(hub.groups.get(name, ())):
                grant(user, role)
    if owner:
        grant(owner, "writer")
    return out
