"""The secret spaces' stores: their own credentials, never the process's.

``c.Spaces.secret_store_env`` names a ``KEY=value`` file (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``)
whose values open secret spaces' S3 repositories; the homes' credentials in the
environment are not used for them, so a bucket policy can keep the two apart. Other
URL schemes (``file://``, ``gs://``, ``az://``) open as usual.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from obstore.store import S3Store

from hometier.errors import UsageError
from hometier.store import Store, open_store

_CLIENT: Any = {"connect_timeout": "10s", "timeout": "300s"}


def read_env_file(path: str) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"c.Spaces.secret_store_env: {path} does not exist")
    out: dict[str, str] = {}
    for line in p.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_opener(env_file: str) -> Callable[[str], Store]:
    """An ``open_store`` for secret spaces that takes S3 credentials from ``env_file``."""
    env = read_env_file(env_file) if env_file else None

    def open_secret(url: str) -> Store:
        if env is None or urlparse(url).scheme != "s3":
            return open_store(url)
        if not env.get("AWS_ACCESS_KEY_ID") or not env.get("AWS_SECRET_ACCESS_KEY"):
            raise UsageError(f"{env_file} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        config: Any = {
            "access_key_id": env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region": env.get("AWS_REGION") or "us-east-1",
        }
        if env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = env["AWS_SESSION_TOKEN"]
        client: Any = dict(_CLIENT)
        endpoint = env.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
            if endpoint.startswith("http://"):
                if not _loopback(endpoint):
                    raise UsageError(f"refusing plain-http S3 endpoint {endpoint}")
                client["allow_http"] = True
        backend = S3Store.from_url(
            url, config=config, client_options=client, retry_config={"max_retries": 0}
        )
        return Store(backend, url)

    return open_secret
