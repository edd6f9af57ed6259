"""The repository ``config`` object: format version, blob key, chunker parameters."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from hometier.errors import Conflict, Error, IntegrityError, NotFound
from hometier.repo.chunker import Chunking

FORMAT = "hometier-repository"
VERSION = 2
"""The newest format this code writes and reads. Older versions stay readable: version 2
is version 1 plus a locator per snapshot (docs/format.md); ``hometier upgrade`` turns a
version 1 repository into a version 2 one in place."""
CONFIG_KEY = "config"


class RepositoryNotFound(NotFound):
    """No hometier repository at {}: create one with `hometier init` (or run a backup)."""


class NotARepository(Conflict):
    """{} already holds other data and no hometier config; refusing to use it as a repository."""

    exit_code = 2


class RepositoryExists(Conflict):
    """{} already holds a hometier repository; nothing was changed."""

    exit_code = 4


class UnsupportedVersion(Error):
    """The repository at {} has format version {}; this hometier reads versions up to {}."""

    exit_code = 2


@dataclass(frozen=True)
class RepoConfig:
    id: str
    blob_key: bytes
    chunking: Chunking = field(default_factory=Chunking)
    version: int = VERSION
    created: str = ""

    @classmethod
    def new(cls, chunking: Chunking | None = None) -> RepoConfig:
        return cls(
            id=uuid.uuid4().hex,
            blob_key=secrets.token_bytes(32),
            chunking=chunking or Chunking(),
            created=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        )

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "blob_key": self.blob_key.hex(),
            "chunker": {
                "algorithm": "fastcdc",
                "min": self.chunking.min,
                "avg": self.chunking.avg,
                "max": self.chunking.max,
            },
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise NotARepository(where) from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NotARepository(where)
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise UnsupportedVersion(where, version, VERSION)
        try:
            key = bytes.fromhex(doc["blob_key"])
            ch = doc["chunker"]
            chunking = Chunking(min=int(ch["min"]), avg=int(ch["avg"]), max=int(ch["max"]))
            if len(key) != 32 or ch.get("algorithm") != "fastcdc":
                raise ValueError("bad key or chunker")
        except (KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"repository config at {where} is malformed: {exc}") from exc
        return cls(
            id=str(doc.get("id", "")),
            blob_key=key,
            chunking=chunking,
            version=version,
            created=str(doc.get("created", "")),
        )
