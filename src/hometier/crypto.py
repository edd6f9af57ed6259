"""Sealing small secrets at rest with a key the operator holds (Fernet, from ``cryptography``).

A *sealed* value is a Fernet token (AES-128-CBC + HMAC-SHA256, with its time): what the
database stores instead of the plaintext. The key never enters the database; it comes
from ``c.Hometier.secret_key`` (env ``HOMETIER_SECRET_KEY``) or the file named by
``c.Hometier.secret_key_file`` (env ``HOMETIER_SECRET_KEY_FILE``). Several keys,
separated by commas or whitespace, rotate: the first seals, every one unseals
(``MultiFernet``), and ``Sealer.rotate`` re-seals a token under the first.

Make a key with ``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
"""

from __future__ import annotations

import os
import re
import stat
from typing import TYPE_CHECKING

from hometier.errors import Error, UsageError

if TYPE_CHECKING:
    from hometier.config import Hometier


class NoSecretKey(UsageError):
    """No secret key is configured: set c.Hometier.secret_key (or HOMETIER_SECRET_KEY), or
    c.Hometier.secret_key_file, to a Fernet key; secrets are never stored in plain text."""


class BadSecretKey(UsageError):
    """The configured secret key is not a Fernet key ({}): make one with
    Fernet.generate_key()."""


class SecretKeyFileUnsafe(UsageError):
    """The secret key file {} {}: it must be a regular file that only its owner can read."""


class CannotUnseal(Error):
    """A sealed secret could not be opened: it was sealed with a key that is no longer
    configured, or it was altered."""

    exit_code = 5
    http_status = 500


def parse_keys(text: str) -> list[bytes]:
    """The keys in ``text`` (comma or whitespace separated), first one first."""
    return [k.encode() for k in re.split(r"[\s,]+", text.strip()) if k]


def read_key_file(path: str) -> str:
    """Read a key file, refusing one that other users could read or replace."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretKeyFileUnsafe(path, "is not a regular file")
        if st.st_mode & 0o077:
            raise SecretKeyFileUnsafe(path, f"has mode {stat.S_IMODE(st.st_mode):o}")
        return os.read(fd, 64 * 1024).decode("ascii", "replace")
    finally:
        os.close(fd)


class Sealer:
    """Seal and unseal small secrets; see the module docstring."""

    def __init__(self, keys: list[bytes]) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise NoSecretKey()
        try:
            fernets = [Fernet(k) for k in keys]
        except (ValueError, TypeError) as exc:
            raise BadSecretKey(str(exc)) from None
        self._multi = MultiFernet(fernets)

    @classmethod
    def from_config(cls, cfg: Hometier) -> Sealer:
        """The sealer of ``c.Hometier.secret_key`` or ``secret_key_file``;
        ``NoSecretKey`` if neither is set."""
        text = cfg.secret_key
        if not text.strip() and cfg.secret_key_file:
            try:
                text = read_key_file(cfg.secret_key_file)
            except OSError as exc:
                raise SecretKeyFileUnsafe(cfg.secret_key_file, f"cannot be read ({exc})") from None
        return cls(parse_keys(text))

    def seal(self, plaintext: bytes) -> str:
        """A token that only a holder of one of the keys can open."""
        return self._multi.encrypt(plaintext).decode("ascii")

    def unseal(self, token: str) -> bytes:
        """The plaintext of ``token``; ``CannotUnseal`` if no key opens it."""
        from cryptography.fernet import InvalidToken

        try:
            return self._multi.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError, ValueError):
            raise CannotUnseal() from None

    def rotate(self, token: str) -> str:
        """``token`` sealed again under the first key (after a key was added in front)."""
        from cryptography.fernet import InvalidToken

        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeEncodeError, ValueError):
            raise CannotUnseal() from None


__all__ = ["BadSecretKey", "CannotUnseal", "NoSecretKey", "Sealer", "parse_keys"]
