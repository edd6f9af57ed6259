"""Sealing secrets kept in the state database (bucket credentials, job secrets).

A ``Sealer`` encrypts with Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``):
a sealed value is an opaque, authenticated text token, useless without the key, and any
change to it is detected. The key never lives in the database: it comes from
``c.Hometier.secret_key``, the ``HOMETIER_SECRET_KEY`` environment variable or a key file
(``c.Hometier.secret_key_file``, readable by its owner only).

Several keys may be given, newest first, separated by commas or whitespace: the first
seals, every one of them unseals (``MultiFernet``), so a key can be rotated by putting a
new one in front, re-sealing (``rotate``), then dropping the old one.

Make a key with ``hometier mounts keygen`` or
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hometier.errors import Error, UsageError


class SecretKeyMissing(UsageError):
    """No secret key to seal credentials with: set c.Hometier.secret_key, the
    HOMETIER_SECRET_KEY variable or c.Hometier.secret_key_file (make one with
    `hometier mounts keygen`)."""


class BadSecretKey(UsageError):
    """The secret key is not usable: {}"""


class UnsealError(Error):
    """A sealed secret could not be opened: it was sealed with another key or altered.
    {}"""

    exit_code = 5
    http_status = 500


def _split(material: str) -> list[str]:
    return [k for k in material.replace(",", " ").split() if k]


def read_key_file(path: str | os.PathLike[str]) -> str:
    """The keys in ``path``; refused if anyone but its owner may read or write it."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BadSecretKey(f"key file {p}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadSecretKey(f"key file {p} is not a regular file")
        if st.st_mode & 0o077:
            raise BadSecretKey(
                f"key file {p} may be read or written by others (mode {st.st_mode & 0o777:o}); "
                "chmod 600 it"
            )
        return os.read(fd, 64 * 1024).decode("ascii", "replace")
    finally:
        os.close(fd)


class Sealer:
    """Seals and unseals secrets with the configured key(s); thread-safe."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise SecretKeyMissing()
        try:
            fernets = [Fernet(k) for k in keys]
        except (ValueError, TypeError) as exc:
            raise BadSecretKey(
                "each key must be 32 bytes in url-safe base64 (Fernet.generate_key())"
            ) from exc
        self._multi = MultiFernet(fernets)

    @classmethod
    def from_material(cls, material: str) -> Sealer:
        """From text holding one or more keys, newest first."""
        return cls(_split(material))

    @classmethod
    def from_config(cls, cfg: Any) -> Sealer:
        """From a ``Hometier`` configurable: ``secret_key`` (or ``HOMETIER_SECRET_KEY``,
        its default), else ``secret_key_file``. Raises ``SecretKeyMissing``."""
        material = str(getattr(cfg, "secret_key", "") or "")
        path = str(getattr(cfg, "secret_key_file", "") or "")
        if not material.strip() and path:
            material = read_key_file(path)
        if not material.strip():
            raise SecretKeyMissing()
        return cls.from_material(material)

    @staticmethod
    def generate_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode("ascii")

    def seal(self, plaintext: bytes) -> str:
        """An authenticated, encrypted token of ``plaintext`` (ASCII text)."""
        return self._multi.encrypt(bytes(plaintext)).decode("ascii")

    def unseal(self, token: str) -> bytes:
        """The plaintext of ``token``; ``UnsealError`` if no key opens it or it was altered."""
        from cryptography.fernet import InvalidToken

        try:
            return self._multi.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError, ValueError) as exc:
            raise UnsealError("") from exc

    def rotate(self, token: str) -> str:
        """``token`` sealed again with the newest key (for key rotation)."""
        from cryptography.fernet import InvalidToken

        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeEncodeError, ValueError) as exc:
            raise UnsealError("") from exc

    def __repr__(self) -> str:
        return "<Sealer>"  # never the key


__all__ = ["BadSecretKey", "Sealer", "SecretKeyMissing", "UnsealError", "read_key_file"]
