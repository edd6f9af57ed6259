"""Restore tickets: what a spawn hook hands the service so that one login's restore is
authorized without a round trip to the Hub.

The hook runs inside the Hub; the service shares one secret with it already, the
service's own Hub API token (``api_token`` in the Hub's service entry,
``JUPYTERHUB_API_TOKEN`` in the service). A ticket is ``htr1.<payload>.<mac>``: the payload
names one user and an expiry, the MAC is HMAC-SHA256 under a key derived from that token.
The service checks it with one HMAC instead of asking the Hub: a class of 500 logging in at
once costs the Hub nothing more than the spawns themselves (the Hub checks ~30 tokens a
second on a small machine, so 500 checks alone took 16 s).

What a ticket grants is exactly what the one-spawn Hub token granted:
``custom:hometier:restore!user=<user>`` — request and follow that home's restore, and
stream its latest snapshot into that user's own volume. It lives as long as the spawn may
(``token_ttl``, 900 s by default). What is given up: a ticket cannot be revoked one by one
at the Hub (nobody revoked the 15-minute spawn tokens either); rotating the service's
token revokes every ticket at once, and a ticket for a user deleted meanwhile can only
restore that user's files for the rest of its life.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

from hometier.scopes import RESTORE

PREFIX = "htr1."
_CONTEXT = b"hometier restore ticket v1"
_USER = re.compile(r"^[^/\x00]{1,255}$")


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_ticket(secret: str, user: str, ttl: float, now: float | None = None) -> str:
    """A ticket for ``user``'s restore, valid ``ttl`` seconds, signed with ``secret``."""
    if not secret:
        raise ValueError("a restore ticket needs the service's API token")
    payload = {
        "u": user,
        "e": int((time.time() if now is None else now) + ttl),
        "n": secrets.token_hex(8),
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(_key(secret), (PREFIX + body).encode(), hashlib.sha256).digest()
    return f"{PREFIX}{body}.{_b64(mac)}"


def is_ticket(token: str) -> bool:
    return token.startswith(PREFIX)


def verify_ticket(secret: str, token: str, now: float | None = None) -> str | None:
    """The user a valid, unexpired ticket names; None for anything else."""
    if not secret or not token.startswith(PREFIX) or len(token) > 2048:
        return None
    try:
        body, mac = token[len(PREFIX) :].split(".")
        wanted = hmac.new(_key(secret), (PREFIX + body).encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(wanted, _unb64(mac)):
            return None
        payload = json.loads(_unb64(body))
        user, expires = payload["u"], payload["e"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(user, str) or not _USER.match(user) or not isinstance(expires, int):
        return None
    if expires < (time.time() if now is None else now):
        return None
    return user


def ticket_model(user: str) -> dict[str, Any]:
    """The caller a ticket stands for, in the shape the Hub describes token owners."""
    return {"name": f"ticket:{user}", "kind": "ticket", "scopes": [f"{RESTORE}!user={user}"]}
