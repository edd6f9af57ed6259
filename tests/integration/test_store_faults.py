"""How the store fails: outages are retried then reported, refusals are reported at once.

Uses a closed port on 127.0.0.1 for an outage and the session's SeaweedFS server for
wrong credentials; nothing here sends traffic beyond the loopback address.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from hometier.errors import UsageError
from hometier.store import AccessDenied, StoreUnavailable, open_store
from hometier.store.base import Retry


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), never
    listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.mark.usefixtures("unreachable_s3")
@pytest.mark.parametrize("op", ["put", "get", "get_ranges", "head", "list", "delete"])
def test_unreachable_endpoint_is_unavailable_after_the_configured_attempts(op: str) -> None:
    store = open_store("s3://bucket/prefix", retry=Retry(attempts=3, base=0.01))
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: store.put("k", b"data"),
        "get": lambda: store.get("k"),
        "get_ranges": lambda: store.get_ranges("k", [(0, 1)]),
        "head": lambda: store.head("k"),
        "list": lambda: list(store.list("")),
        "delete": lambda: store.delete("k"),
    }
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        calls[op]()
    assert time.monotonic() - started < 10
    assert "3 attempts" in str(info.value)
    # Three attempts are two retries.
    assert store.stats.retries == 2


@pytest.mark.s3
def test_wrong_credentials_are_denied_at_once(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good = open_store(s3_url)
    good.put("k", b"data")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bad = open_store(s3_url, retry=Retry(attempts=3, base=0.01))
    for call in (
        lambda: bad.get("k"),
        lambda: bad.put("k2", b"data"),
        lambda: bad.head("k"),
        lambda: list(bad.list("")),
    ):
        with pytest.raises(AccessDenied):
            call()
    assert bad.stats.retries == 0
    assert good.get("k") == b"data"


@pytest.mark.parametrize("url", ["ftp://host/path", "sftp://host/repo", "gopher://x", "s4://b"])
def test_unknown_scheme_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError) as info:
        open_store(url)
    assert "unknown repository URL" in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    # Never contacted: open_store refuses before any request. 192.0.2.0/24 is TEST-NET-1.
    ["http://192.0.2.10:9000", "http://s3.example.com", "http://10.0.0.1:8333"],
)
@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_plain_http_endpoint_off_loopback_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, endpoint: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv(variable, endpoint)
    with pytest.raises(UsageError) as info:
        open_store("s3://bucket/prefix")
    assert "plain-http" in str(info.value)


def test_loopback_endpoint_without_credentials_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    # obstore would otherwise wait for instance-metadata credentials.
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(UsageError) as info:
        open_store("s3://bucket/prefix")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:9", "http://127.8.9.10:9", "http://localhost:9", "http://[::1]:9"],
)
def test_plain_http_endpoint_on_loopback_is_allowed(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    store = open_store("s3://bucket/prefix")  # no request is made here
    assert store.url == "s3://bucket/prefix"
