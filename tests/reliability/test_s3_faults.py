"""Archive and restore through a faulty S3 (``FaultProxy`` in front of real SeaweedFS).

What must hold, whatever the network does:

- transient faults (503 SlowDown, connection resets before or after the request reached
  S3, bodies cut short, a stall longer than the client timeout) are retried: the archive
  and the restore succeed, the store counted retries, the restored home is
  manifest-equal;
- a stall shorter than the timeout just waits (no retry);
- bytes that arrive wrong (a short body with a matching ``Content-Length``, a flipped
  byte) are never written into a home as a success: the restore either retries and is
  correct, or fails with a clear message, the home stays cold (``failed``, notice in
  place, no staging folder) and the snapshot is intact;
- a persistent failure is a clear error after the configured attempts: an archive leaves
  the home on disk and ``active``; a restore leaves it cold; the next run without
  faults succeeds.

Every Lifecycle here opens its store through the proxy with ``Retry(attempts=8,
base=0.01)``; the truth is read from the bucket directly (``direct_repo``).
"""

from __future__ import annotations

import http.client
import http.server
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import RestoreFailed, restore_home
from hometier.repo import Repository
from hometier.state import ACTIVE, FAILED, queries
from hometier.store import url as store_url_module
from reliability.conftest import (
    SEEDS,
    Site,
    assert_nothing_lost,
    manifest,
    only_notice,
    staging_leftovers,
)
from reliability.faultproxy import FaultProxy, Rule

# Tests that use S3 are marked ``s3`` by the root conftest (through ``proxy``/``site``);
# the proxy's own tests at the end need no server.

WEATHER = {
    "503": [Rule("503", probability=0.3)],
    "reset": [Rule("reset", probability=0.15), Rule("reset", when="after", probability=0.15)],
    "truncate": [Rule("truncate", method="GET", at_byte=37, probability=0.3)],
    "mixed": [
        Rule("503", probability=0.1),
        Rule("reset", probability=0.05),
        Rule("reset", when="after", probability=0.05),
        Rule("truncate", method="GET", at_byte=211, probability=0.1),
        Rule("stall", delay=0.2, probability=0.05),
    ],
}


def _fresh(rules: list[Rule]) -> list[Rule]:
    """Copies with zeroed counters (a Rule counts what it matched)."""
    keys = ("action", "method", "path", "nth", "times", "probability", "delay", "at_byte")
    return [Rule(**{k: getattr(r, k) for k in keys}, when=r.when, lie=r.lie) for r in rules]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weather", sorted(WEATHER))
def test_transient_faults_are_retried_and_both_ways_succeed(
    weather: str,
    seed: int,
    site: Site,
    proxy: FaultProxy,
    direct_repo: Callable[[str], Repository],
    tmp_path: Path,
) -> None:
    home = site.make_home("alice", seed)
    want = {"alice": manifest(home)}
    proxy.rng = random.Random(seed)
    proxy.set_rules(*_fresh(WEATHER[weather]))

    lc = site.lifecycle()
    started = time.monotonic()
    result = archive_home(lc, "alice")
    took = time.monotonic() - started
    assert result.outcome == "archived", result
    assert only_notice(home)
    assert proxy.injected() > 0, "the weather never broke a request"
    assert lc.repo.store.stats.retries > 0
    archive_faults, archive_retries = proxy.injected(), lc.repo.store.stats.retries
    print(
        f"{weather}: archive: {archive_faults} faults in {proxy.requests()} requests, "
        f"{archive_retries} retries, {took:.2f}s"
    )

    proxy.set_rules(*_fresh(WEATHER[weather]))
    lc = site.lifecycle()  # a login in another process: a fresh store and index
    requests = proxy.requests()
    started = time.monotonic()
    restored = restore_home(lc, "alice", "login")
    print(
        f"{weather}: restore: {proxy.injected() - archive_faults} faults in "
        f"{proxy.requests() - requests} requests, {lc.repo.store.stats.retries} retries, "
        f"{time.monotonic() - started:.2f}s"
    )

    assert (restored.outcome, restored.source) == ("restored", "bucket")
    assert manifest(home) == want["alice"]
    assert queries.get_home(lc.db, "alice").state == ACTIVE
    assert staging_leftovers(site.homes) == []
    assert proxy.injected() > archive_faults
    assert lc.repo.store.stats.retries > 0
    proxy.clear()
    assert_nothing_lost(lc, want, tmp_path / "scratch", direct_repo(site.store_url))


def test_a_stall_shorter_than_the_timeout_just_waits(site: Site, proxy: FaultProxy) -> None:
    home = site.make_home("bob", 2)
    want = manifest(home)
    proxy.set_rules(Rule("stall", delay=1.0, method="PUT", path="/packs/", times=2))
    lc = site.lifecycle()
    started = time.monotonic()
    assert archive_home(lc, "bob").outcome == "archived"
    assert time.monotonic() - started >= 1.0
    assert proxy.injected("stall") == 2
    assert lc.repo.store.stats.retries == 0

    proxy.set_rules(Rule("stall", delay=1.0, method="GET", path="/packs/", times=1))
    lc = site.lifecycle()
    assert restore_home(lc, "bob", "login").outcome == "restored"
    assert manifest(home) == want
    assert proxy.injected("stall") == 3
    assert lc.repo.store.stats.retries == 0


def test_a_stall_longer_than_the_timeout_is_cut_and_retried(
    site: Site, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real timeout is 300 s; the client option is shortened for this test only.
    monkeypatch.setitem(store_url_module._CLIENT, "timeout", "1s")
    home = site.make_home("carol", 3)
    want = manifest(home)
    lc = site.lifecycle()
    assert archive_home(lc, "carol").outcome == "archived"

    proxy.set_rules(Rule("stall", delay=3.0, method="GET", path="/packs/", times=1))
    lc = site.lifecycle()
    started = time.monotonic()
    assert restore_home(lc, "carol", "login").outcome == "restored"
    assert manifest(home) == want
    assert lc.repo.store.stats.retries >= 1
    assert time.monotonic() - started < 10


# --- wrong bytes: never a successful restore ------------------------------------------------

WRONG_BYTES = {
    "pack-short-body": Rule("truncate", method="GET", path="/packs/", at_byte=100, lie=True),
    "pack-flipped-byte": Rule("corrupt", method="GET", path="/packs/", at_byte=64),
    # A restore reads the snapshot's locator, never the index (format 2); a locator that
    # stays wrong makes it fall back to the index, which restores exactly.
    "locator-short-body": Rule("truncate", method="GET", path="/locators/", at_byte=50, lie=True),
    "locator-flipped-byte": Rule("corrupt", method="GET", path="/locators/", at_byte=20),
    "snapshot-short-body": Rule(
        "truncate", method="GET", path="/snapshots/[^?]", at_byte=30, lie=True
    ),
    "snapshot-flipped-byte": Rule("corrupt", method="GET", path="/snapshots/[^?]", at_byte=9),
}


@pytest.mark.parametrize("fault", sorted(WRONG_BYTES))
def test_wrong_bytes_never_make_a_successful_restore(
    fault: str,
    site: Site,
    proxy: FaultProxy,
    direct_repo: Callable[[str], Repository],
    tmp_path: Path,
) -> None:
    home = site.make_home("dave", 4)
    want = {"dave": manifest(home)}
    assert archive_home(site.lifecycle(), "dave").outcome == "archived"

    proxy.set_rules(*_fresh([WRONG_BYTES[fault]]))
    lc = site.lifecycle()
    try:
        result = restore_home(lc, "dave", "login")
    except RestoreFailed as exc:
        message = exc.get_message()
        print(f"{fault}: refused: {message}")
        assert message.startswith("Your files could not be restored"), message
        row = queries.get_home(lc.db, "dave")
        assert row.state == FAILED and row.is_cold, row.state
        assert only_notice(home), "a failed restore left files (or no notice) in the home"
        assert staging_leftovers(site.homes) == []
    else:
        print(f"{fault}: retried, restored from the {result.source}")
        assert result.outcome == "restored"
        assert manifest(home) == want["dave"], "restored with wrong bytes"
    assert proxy.injected() >= 1, "the fault never fired"

    proxy.clear()
    assert_nothing_lost(lc, want, tmp_path / "scratch", direct_repo(site.store_url))
    again = restore_home(site.lifecycle(), "dave", "login again")
    assert again.outcome in ("restored", "active")
    assert manifest(home) == want["dave"]


ONCE = {
    name: Rule(r.action, method=r.method, path=r.path, at_byte=r.at_byte, lie=r.lie, times=1)
    for name, r in WRONG_BYTES.items()
}


@pytest.mark.parametrize("fault", sorted(ONCE))
def test_wrong_bytes_once_are_read_again_and_the_restore_is_exact(
    fault: str, site: Site, proxy: FaultProxy
) -> None:
    """A transfer that went wrong once (a flipped byte, a body cut short under a matching
    length) is read again, as restic does: the login restores, exactly. When the stored
    object itself is wrong every read fails and the restore is refused (test above)."""
    home = site.make_home("erin", 4)
    want = manifest(home)
    assert archive_home(site.lifecycle(), "erin").outcome == "archived"

    proxy.set_rules(*_fresh([ONCE[fault]]))
    result = restore_home(site.lifecycle(), "erin", "login")
    assert proxy.injected() == 1, "the fault never fired"
    assert result.outcome == "restored", result
    assert manifest(home) == want, "restored with wrong bytes"


@pytest.mark.parametrize("times", [None, 1], ids=["every-read", "once"])
def test_a_flipped_byte_while_reading_back_keeps_the_home(
    times: int | None,
    site: Site,
    proxy: FaultProxy,
    direct_repo: Callable[[str], Repository],
    tmp_path: Path,
) -> None:
    """With ``read_back`` every blob is downloaded and hashed before the home goes. A
    byte flipped on every read is an error, and the home stays; flipped once, on the way,
    the blob is read again and verifies (the stored pack is fine), and the home goes."""
    home = site.make_home("erin", 5)
    want = {"erin": manifest(home)}
    proxy.set_rules(Rule("corrupt", method="GET", path="/packs/", at_byte=64, times=times))
    lc = site.lifecycle(read_back=True)
    result = archive_home(lc, "erin")
    print(f"read-back with a flipped byte ({times or 'every'}): {result.outcome}: {result.reason}")
    assert proxy.injected() >= 1, "the fault never fired"
    if times is None:
        assert result.outcome == "failed", result
        assert "did not verify" in result.reason or "does not match" in result.reason
        assert manifest(home) == want["erin"]
        assert queries.get_home(lc.db, "erin").state == ACTIVE
        proxy.clear()
        assert archive_home(site.lifecycle(read_back=True), "erin").outcome == "archived"
    else:
        assert result.outcome == "archived", result
    assert_nothing_lost(lc, want, tmp_path / "scratch", direct_repo(site.store_url))


# --- persistent failure --------------------------------------------------------------------


@pytest.mark.parametrize("action", ["503", "reset"])
def test_a_persistent_failure_while_archiving_keeps_the_home_and_the_next_run_recovers(
    action: str,
    site: Site,
    proxy: FaultProxy,
    direct_repo: Callable[[str], Repository],
    tmp_path: Path,
) -> None:
    home = site.make_home("frank", 6)
    want = {"frank": manifest(home)}
    lc = site.lifecycle()
    proxy.set_rules(Rule(action, method="PUT", path="/packs/"))
    started = time.monotonic()
    result = archive_home(lc, "frank")
    took = time.monotonic() - started

    print(f"persistent {action}: {result.outcome} after {took:.1f}s: {result.reason}")
    assert result.outcome == "failed"
    assert "did not answer after 8 attempts" in result.reason, result.reason
    assert took < 30
    assert manifest(home) == want["frank"]
    row = queries.get_home(lc.db, "frank")
    assert row.state == ACTIVE and row.claimed_by is None
    assert not (site.homes / ".hometier-quarantine").exists() or not [
        p for p in (site.homes / ".hometier-quarantine").iterdir() if not p.name.startswith(".")
    ]
    last = queries.events(lc.db, "frank", kind="state")[-1]
    assert (last.from_state, last.to_state) == ("archiving", "active")

    proxy.clear()
    assert archive_home(site.lifecycle(), "frank").outcome == "archived"
    assert_nothing_lost(lc, want, tmp_path / "scratch", direct_repo(site.store_url))


@pytest.mark.parametrize("action", ["503", "reset"])
def test_a_persistent_failure_while_restoring_keeps_the_archive_and_the_next_login_recovers(
    action: str,
    site: Site,
    proxy: FaultProxy,
    direct_repo: Callable[[str], Repository],
    tmp_path: Path,
) -> None:
    home = site.make_home("gina", 7)
    want = {"gina": manifest(home)}
    assert archive_home(site.lifecycle(), "gina").outcome == "archived"

    proxy.set_rules(Rule(action, method="GET", path="/packs/"))
    lc = site.lifecycle()
    with pytest.raises(RestoreFailed) as info:
        restore_home(lc, "gina", "login")
    message = info.value.get_message()
    print(f"persistent {action} while restoring: {message}")
    assert "safe in the archive" in message and "did not answer after 8 attempts" in message
    row = queries.get_home(lc.db, "gina")
    assert row.state == FAILED and row.is_cold
    assert only_notice(home)
    assert staging_leftovers(site.homes) == []
    assert_nothing_lost(lc, want, tmp_path / "scratch", direct_repo(site.store_url))

    proxy.clear()
    result = restore_home(site.lifecycle(), "gina", "login again")
    assert result.outcome == "restored"
    assert manifest(home) == want["gina"]
    assert queries.get_home(lc.db, "gina").state == ACTIVE


# --- the proxy itself (a tiny local upstream, no S3) ----------------------------------------


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = (self.path * 1000).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[::-1])


@pytest.fixture
def local_proxy() -> Iterator[FaultProxy]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    px = FaultProxy(f"http://127.0.0.1:{server.server_address[1]}", seed=1)
    try:
        yield px
    finally:
        px.close()
        server.shutdown()
        server.server_close()


def test_the_proxy_forwards_bodies_unchanged_on_one_kept_alive_connection(
    local_proxy: FaultProxy,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", local_proxy.port, timeout=10)
    for i in range(5):
        conn.request("GET", f"/obj/{i}")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, (f"/obj/{i}" * 1000).encode())
    conn.request("GET", "/chunked")
    r = conn.getresponse()
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert r.read() == b"hello chunked world"
    conn.request("HEAD", "/obj")
    r = conn.getresponse()
    assert (r.status, r.getheader("Content-Length"), r.read()) == (200, "12345", b"")
    conn.request("PUT", "/obj", body=b"0123456789")
    r = conn.getresponse()
    assert (r.status, r.read()) == (201, b"9876543210")
    assert local_proxy.requests() == 8 and local_proxy.injected() == 0
    conn.close()


def test_the_proxy_rules_pick_requests_by_method_path_and_rank(local_proxy: FaultProxy) -> None:
    local_proxy.set_rules(
        Rule("503", method="GET", path="^/a/", nth=[2, 3]),
        Rule("truncate", path="^/b/", at_byte=5, times=1),
        Rule("truncate", path="^/c/", at_byte=5, lie=True),
        Rule("corrupt", path="^/d/", at_byte=0),
    )

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", local_proxy.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    assert [get("/a/x")[0] for _ in range(4)] == [200, 503, 503, 200]
    status, body = get("/a/y")
    assert status == 200
    with pytest.raises(http.client.IncompleteRead):
        get("/b/x")  # the body stops after 5 of its bytes
    assert get("/b/x") == (200, b"/b/x" * 1000)  # fired once only
    assert get("/c/x") == (200, b"/c/x/")  # a short body that says it is complete
    assert get("/d/x")[1][:4] == bytes([ord("/") ^ 0x5A]) + b"d/x"
    assert local_proxy.injected("503") == 2
    assert local_proxy.injected("truncate") == 2
    conn = http.client.HTTPConnection("127.0.0.1", local_proxy.port, timeout=10)
    local_proxy.set_rules(Rule("reset"))
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        conn.request("GET", "/e")
        conn.getresponse().read()
    conn.close()
