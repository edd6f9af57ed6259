"""The short-lived token a spawn hook mints so that only this user's restore can run."""

from __future__ import annotations

from typing import Any

from hometier.scopes import RESTORE as RESTORE_SCOPE

TOKEN_NOTE = "hometier: restore before spawn"


def restore_scope(username: str) -> str:
    return f"{RESTORE_SCOPE}!user={username}"


def mint_restore_token(spawner: Any, expires_in: int = 900) -> str:
    """A new API token of the spawning user, valid ``expires_in`` seconds, that can do one
    thing: request and follow the restore of that user's home.

    The user must hold ``custom:hometier:restore!user`` (``configure_hub`` grants it to the
    ``user`` role); the token cannot reach anything else, and never object storage.
    """
    token: str = spawner.user.new_api_token(
        note=TOKEN_NOTE,
        expires_in=expires_in,
        scopes=[restore_scope(spawner.user.name)],
    )
    return token
