"""Map user names to home folders, refusing names that would escape the homes root."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from hometier.errors import UsageError

NOTICE_NAME = "ARCHIVED-BY-HOMETIER.txt"
"""The file an archived home holds in place of its files (``lifecycle.notice``)."""

QUARANTINE_DIR = ".hometier-quarantine"
"""Where archived homes wait, on the homes volume, before they are deleted."""

MAX_NAME = 255

MAX_REMEMBERED = 200_000
"""Folder names ``HomeLayout.maps_back`` keeps answers for (a few MB at most)."""


class InvalidUsername(UsageError):
    """Invalid user name {!r}: {}."""


def check_username(user: str) -> str:
    """Return ``user`` if it is a safe single path component, else raise ``InvalidUsername``."""
    if not user:
        raise InvalidUsername(user, "it is empty")
    if len(user) > MAX_NAME:
        raise InvalidUsername(user[:40] + "...", f"longer than {MAX_NAME} characters")
    if "/" in user or "\\" in user or "\0" in user:
        raise InvalidUsername(user, "it contains a path separator or NUL")
    if user in (".", "..") or user.startswith("."):
        raise InvalidUsername(user, "it starts with a dot")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in user):
        raise InvalidUsername(user, "it contains control characters")
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUsername(user, "it is not valid Unicode") from None
    return user


class HomeLayout:
    """Where each user's home lives: ``root / template.format(username=user)``."""

    def __init__(self, root: str | os.PathLike[str], template: str = "{username}") -> None:
        self.root = Path(os.path.abspath(root))
        self.template = template
        self._maps_back: dict[str, bool] = {}

    def path(self, user: str) -> Path:
        check_username(user)
        rel = self.template.format(username=user)
        full = Path(os.path.normpath(self.root / rel))
        if full == self.root or self.root not in full.parents:
            raise InvalidUsername(user, f"its home would be outside {self.root}")
        return full

    def maps_back(self, name: str) -> bool:
        """Whether the folder ``root/name`` is the home of the user ``name``: a valid
        name whose path is that folder. Remembered (the layout never changes), as every
        archiver cycle asks it of every folder under the root."""
        known = self._maps_back.get(name)
        if known is None:
            try:
                known = self.path(name) == self.root / name
            except InvalidUsername:
                known = False
            if len(self._maps_back) >= MAX_REMEMBERED:
                self._maps_back.clear()
            self._maps_back[name] = known
        return known
