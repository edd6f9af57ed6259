"""``open_store(url)``: build a ``Store`` from a repository URL."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from hometier.errors import NotFound, UsageError
from hometier.store.base import Retry, Store
from hometier.store.errors import short

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


class FolderNotFound(NotFound):
    """There is no folder {}: check the repository URL."""


class BadStoreURL(UsageError):
    """Cannot use the repository URL {!r}: {}"""


_BUCKET_SCHEMES = {
    "s3": "s3://BUCKET/PREFIX",
    "gs": "gs://BUCKET/PREFIX",
    "az": "az://CONTAINER/PREFIX",
    "azure": "azure://CONTAINER/PREFIX",
    "abfs": "abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX",
    "abfss": "abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX",
}


_HINTS = {
    "s3": "set AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_ENDPOINT_URL)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME and a credential (AZURE_STORAGE_ACCOUNT_KEY, ...)",
}


def _from_url(url: str, make: Any, **kw: Any) -> Any:
    """A cloud backend, with obstore's configuration errors (a missing account, a
    malformed URL) turned into one sentence instead of a Rust debug dump."""
    try:
        return make(url, **kw)
    except Exception as exc:  # noqa: BLE001 - obstore raises its own GenericError
        scheme = urlparse(url).scheme
        hint = _HINTS.get("az" if scheme in ("azure", "abfs", "abfss") else scheme, "")
        raise BadStoreURL(url, short(exc) + (f" ({hint})" if hint else "")) from exc


def open_store(url: str, *, retry: Retry | None = None, create: bool = True) -> Store:
    """Open the store at ``url``.

    ``file://PATH`` (relative paths allowed: ``file://./x``) creates the folder, unless
    ``create`` is false: then a missing folder raises ``FolderNotFound`` and nothing is
    created (read-only verbs: a mistyped path must not leave an empty folder behind);
    ``memory://NAME`` is process-wide per name (tests); ``s3://bucket/prefix`` reads the
    endpoint, region and credentials from the standard ``AWS_*`` variables and allows an
    ``http://`` endpoint only on a loopback address; ``gs://`` and ``az://`` read their
    clouds' variables. Raises ``UsageError`` for an unknown scheme, a URL without a
    bucket (``s3:/bucket``) or one the cloud's client refuses (``az://`` without an
    account).
    """
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme in _BUCKET_SCHEMES and (not parsed.netloc or not url.startswith(f"{scheme}://")):
        raise BadStoreURL(url, f"expected {_BUCKET_SCHEMES[scheme]}")
    if scheme == "file" or (scheme == "" and url):
        raw = url[len("file://") :] if scheme == "file" else url
        if not raw or (scheme == "file" and not url.startswith("file://")):
            raise BadStoreURL(url, "expected file://PATH")
        path = Path(raw).expanduser().absolute()
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise FolderNotFound(path)
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
        backend = _from_url(
            url,
            S3Store.from_url,
            config=config,
            client_options=client,
            retry_config=_NO_CLIENT_RETRY,
        )
        return Store(backend, url, retry=retry)
    if scheme == "gs":
        backend = _from_url(
            url, GCSStore.from_url, client_options=_CLIENT, retry_config=_NO_CLIENT_RETRY
        )
        return Store(backend, url, retry=retry)
    if scheme in ("az", "azure", "abfs", "abfss"):
        backend = _from_url(
            url, AzureStore.from_url, client_options=_CLIENT, retry_config=_NO_CLIENT_RETRY
        )
        return Store(backend, url, retry=retry)
    raise UsageError(
        f"unknown repository URL {url!r}: use file://PATH, s3://BUCKET/PREFIX, "
        "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://NAME"
    )
