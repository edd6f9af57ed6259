"""A bucket folder through the object-store API (obstore), never through a mount.

The service browses and downloads bucket folders with these, so it need not keep every
bucket mounted; and ``preflight`` is the check made before a daemon starts, which turns
bad credentials, a missing bucket and an unreachable endpoint into one clear error each
(s3fs itself exits 0 or mounts and fails later in each of those cases).

obstore reads ``AWS_*`` variables when it builds a client: hometier's own (the
repository's credentials, endpoint and session token) must never go to a folder's
endpoint, so the endpoint and region are always explicit and credentials come from a
provider that knows only the folder's key, or requests are unsigned (a public bucket).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.store import S3Store

from hometier.errors import NotFound, UsageError
from hometier.mounts.spec import Credentials, FolderSpec
from hometier.store.base import Retry, Store
from hometier.store.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)

CHUNK = 1024 * 1024
PAGE = 1000


class PathNotFound(NotFound):
    """{} has no file or folder {}."""


class FolderUnreachable(StoreError):
    """Bucket folder {} cannot be used: {}"""

    http_status = 502


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file" | "dir"
    size: int = 0
    modified: dt.datetime | None = None


def endpoint_of(spec: FolderSpec) -> str:
    return spec.endpoint or f"https://s3.{spec.region}.amazonaws.com"


class FolderObjects(Store):
    """The objects of one bucket folder; keys are relative to its prefix."""

    def __init__(self, spec: FolderSpec, credentials: Credentials | None, attempts: int = 3):
        endpoint = endpoint_of(spec)
        config: Any = {
            "endpoint": endpoint,
            "region": spec.region,
            "virtual_hosted_style_request": False,
        }
        client: Any = {"connect_timeout": "5s", "timeout": "60s"}
        if urlparse(endpoint).scheme == "http":
            client["allow_http"] = True  # FolderSpec admits http on loopback only
        kwargs: dict[str, Any] = {}
        if credentials is None:
            config["skip_signature"] = True
        else:
            creds = credentials

            def provider() -> dict[str, Any]:
                return {
                    "access_key_id": creds.access_key_id,
                    "secret_access_key": creds.secret_access_key,
                    "token": creds.session_token or None,
                    "expires_at": None,
                }

            kwargs["credential_provider"] = provider
        backend = S3Store(
            spec.bucket,
            prefix=spec.prefix or None,
            config=config,
            client_options=client,
            retry_config={"max_retries": 0},
            **kwargs,
        )
        url = f"s3://{spec.bucket}/{spec.prefix}".rstrip("/")
        super().__init__(backend, url, retry=Retry(attempts=attempts, base=0.2, cap=2.0))
        self.spec = spec

    def preflight(self) -> None:
        """List one page: ``FolderUnreachable`` saying which of credentials, bucket or
        endpoint is wrong."""
        name = self.spec.name
        try:
            self._call("list", "", lambda: obstore.list_with_delimiter(self._backend, None))
        except AccessDenied as exc:
            raise FolderUnreachable(
                name, "access denied: the credentials are wrong or may not read the bucket"
            ) from exc
        except BucketNotFound as exc:
            raise FolderUnreachable(name, f"bucket {self.spec.bucket} does not exist") from exc
        except StoreUnavailable as exc:
            raise FolderUnreachable(
                name, f"the endpoint {endpoint_of(self.spec)} does not answer"
            ) from exc
        except StoreError as exc:
            raise FolderUnreachable(name, exc.get_message()) from exc

    def list_dir(self, path: str) -> list[Entry]:
        """Folders then files directly in ``path`` ("" is the folder's top)."""
        rel = clean_path(path)
        prefix = rel + "/" if rel else None
        doc = self._call("list", rel, lambda: obstore.list_with_delimiter(self._backend, prefix))
        self.stats.add("list")
        cut = len(prefix or "")
        dirs = sorted({p[cut:].rstrip("/") for p in doc["common_prefixes"]} - {""})
        files = [
            Entry(str(o["path"])[cut:], "file", int(o["size"]), o.get("last_modified"))
            for o in doc["objects"]
            # s3fs marks folders with an empty "name/" object: not a file of its own.
            if str(o["path"])[cut:] and not str(o["path"]).endswith("/")
        ]
        if rel and not dirs and not files and not self._exists_raw(rel + "/"):
            raise PathNotFound(self.spec.name, rel)
        return [Entry(d, "dir") for d in dirs] + sorted(files, key=lambda e: e.name)

    def open_file(self, path: str) -> tuple[int, Iterator[bytes]]:
        """Size and chunks of one object; ``PathNotFound`` if there is none."""
        rel = clean_path(path)
        if not rel:
            raise UsageError("name a file to download")
        try:
            result = self._call("get", rel, lambda: obstore.get(self._backend, rel))
        except ObjectNotFound as exc:
            raise PathNotFound(self.spec.name, rel) from exc
        size = int(result.meta["size"])
        self.stats.add("get", size)
        return size, (bytes(chunk) for chunk in result.stream(min_chunk_size=CHUNK))


def clean_path(path: str) -> str:
    """A relative key path: no ``..``, no empty segments, no control characters."""
    path = (path or "").strip("/")
    if not path:
        return ""
    if any(ord(c) < 32 for c in path) or len(path) > 1024:
        raise UsageError("bad path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"bad path {path!r}: empty, '.' or '..' segments")
    return path


__all__ = ["Entry", "FolderObjects", "FolderUnreachable", "PathNotFound", "clean_path"]
