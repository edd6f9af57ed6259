"""``open_store(url)``: build a ``Store`` from a repository URL."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from hometier.errors import UsageError
from hometier.store.base import Retry, Store

# obstore retries internally too; hometier retries itself so that it can classify and
# count every attempt, so the client's own retry is turned off.
_NO_CLIENT_RETRY: Any = {"max_retries": 0}
_CLIENT: Any = {"connect_timeout": "10s", "timeout": "300s"}
_MEMORY: dict[str, MemoryStore] = {}


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_store(url: str, *, retry: Retry | None = None) -> Store:
    """Open the store at ``url``.

    ``file://PATH`` (relative paths allowed: ``file://./x``) creates the folder;
    ``memory://NAME`` is process-wide per name (tests); ``s3://bucket/prefix`` reads the
    endpoint, region and credentials from the standard ``AWS_*`` variables and allows an
    ``http://`` endpoint only on a loopback address; ``gs://`` and ``az://`` read their
    clouds' variables. Raises ``UsageError`` for an unknown scheme.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme == "file" or (scheme == "" and url):
        raw = url[len("file://") :] if scheme == "file" else url
        path = Path(raw).expanduser().absolute()
        path.mkdir(parents=True, exist_ok=True)
        backend: Any = LocalStore(prefix=path)
        return Store(backend, f"file://{path}", retry=retry)
    if scheme == "memory":
        name = parsed.netloc + parsed.path
        backend = _MEMORY.setdefault(name, MemoryStore())
        return Store(backend, url, retry=retry)
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config: Any = {}
        client: Any = dict(_CLIENT)
        if endpoint:
            config["endpoint"] = endpoint
            if endpoint.startswith("http://"):
                if not _loopback(endpoint):
                    raise UsageError(
                        f"refusing plain-http S3 endpoint {endpoint}: "
                        "only loopback addresses may use http://"
                    )
                client["allow_http"] = True
            config.setdefault("virtual_hosted_style_request", False)
            if _loopback(endpoint) and not os.environ.get("AWS_ACCESS_KEY_ID"):
                # Without this obstore would go looking for instance credentials.
                raise UsageError(
                    f"no credentials for {endpoint}: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                )
        if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            config["region"] = "us-east-1"
        backend = S3Store.from_url(
            url, config=config, client_options=client, retry_config=_NO_CLIENT_RETRY
        )
        return Store(backend, url, retry=retry)
    if scheme == "gs":
        backend = GCSStore.from_url(url, client_options=_CLIENT, retry_config=_NO_CLIENT_RETRY)
        return Store(backend, url, retry=retry)
    if scheme in ("az", "azure", "abfs", "abfss"):
        backend = AzureStore.from_url(url, client_options=_CLIENT, retry_config=_NO_CLIENT_RETRY)
        return Store(backend, url, retry=retry)
    raise UsageError(
        f"unknown repository URL {url!r}: use file://PATH, s3://BUCKET/PREFIX, "
        "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://NAME"
    )
