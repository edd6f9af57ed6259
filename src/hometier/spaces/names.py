"""Space names, and the names derived from them on disk and in Kubernetes.

A space name is what users type and see: 1 to 48 characters of lower-case ASCII
letters, digits, ``-`` and ``_``, starting with a letter or digit. Anything else —
``../``, ``/``, dots, spaces, upper case, non-ASCII look-alikes — is refused with one
clear error, before anything is written. The name is used as a folder name only for
public and private spaces; a secret space's folder, its POSIX group and its snapshots'
owner use its opaque ``key``, so nothing world-readable (``/etc/group``, a listing of the
spaces root) ever shows a secret name.
"""

from __future__ import annotations

import re
import secrets

from hometier.errors import UsageError

MAX_NAME = 48
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
RESERVED = frozenset({"secret", "trash", "quarantine", "lost+found", "admin", "api", "new"})
SECRET_DIR = ".secret"
"""Secret spaces live in ``<root>/.secret/<key>``: the folder is searchable, not listable."""
STATE_DIR = ".hometier"
"""hometier's own folder on the spaces volume (quarantine, locks): root's, 0700."""


class InvalidSpaceName(UsageError):
    """Invalid space name {!r}: {}."""


def check_space_name(name: object) -> str:
    """``name`` if it is a valid space name, else ``InvalidSpaceName``."""
    if not isinstance(name, str):
        raise InvalidSpaceName(str(name)[:40], "it must be a string")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if not name:
        raise InvalidSpaceName(shown, "it is empty")
    if len(name) > MAX_NAME:
        raise InvalidSpaceName(shown, f"it is longer than {MAX_NAME} characters")
    if not NAME_RE.match(name):
        raise InvalidSpaceName(
            shown,
            "use lower-case ASCII letters, digits, '-' and '_', starting with a letter or digit",
        )
    if name in RESERVED:
        raise InvalidSpaceName(shown, "it is reserved")
    return name


def new_key() -> str:
    """A fresh opaque key: 128 random bits, hex."""
    return secrets.token_hex(16)


def folder_for(name: str, key: str, level: str) -> str:
    """The space's folder relative to the spaces root."""
    return f"{SECRET_DIR}/{key}" if level == "secret" else name


def group_name(prefix: str, gid: int) -> str:
    """The POSIX group of a space: ``<prefix><gid>`` — never the space's name, which may
    be secret; at most 32 characters (the limit of useradd/groupadd)."""
    name = f"{prefix}{gid}"
    if len(name) > 32 or not re.match(r"[a-z_][a-z0-9_-]*\Z", name):
        raise UsageError(f"POSIX group name {name!r} is not valid: check c.Spaces.group_prefix")
    return name


def volume_name(space_id: int) -> str:
    """A pod volume's name for a space (a DNS label, naming no space)."""
    return f"hometier-space-{space_id}"
