"""Fixtures of the dashboard's browser tests: a real Hub + service with homes in every
state on S3 behind a fault proxy, and Debian's headless Chromium driven by Playwright.

- ``dash`` (module scope): ``fixtures.service.start_hub_with_service``, then the service
  moved to the session's SeaweedFS S3 through ``reliability.faultproxy.FaultProxy``
  (``Dash.proxy``: the outage test makes it reset every connection), with 15 Hub users
  and real data made with the ``hometier`` CLI:

  - ``bob``: active, two snapshots; ``notes.txt`` changed between them
    (``Dash.bob_notes_v1`` is the old version, byte for byte); a file whose name is not
    UTF-8 (``ODD_NAME``); a PNG, an HTML page, an SVG and a 400 kB log for the previews;
  - ``alice``, ``ivan``, ``judy``: archived (quarantine removed: a restore reads the
    bucket);
  - ``carol``: archived, then the packs of her snapshot deleted from the bucket and a
    restore attempted: ``failed``, with the restore's error;
  - ``dave``: active, for the admin to archive from the dashboard;
  - ``mallory``: active with a lease (so no "Archive now");
  - ``erin``, ``frank``, ``grace``, ``heidi``, ``oscar``, ``peggy``, ``trent``: active;
  - ``HOSTILE``: a home whose name is HTML, exempt with a reason that is a script tag.

  Active homes are made 40 days old, so that ``hometier serve --once --dry-run`` (the
  archiver's scan, archiving nothing) registers and measures them.

- ``browser`` (module scope): Chromium from ``/usr/bin/chromium`` (``apt-get install
  chromium``; Playwright's own browser download is never used). Skips when Playwright or
  the binary is missing (CI=true makes that a failure; ``scripts/test`` installs both).
- ``Dash.login(browser, user, width)``: a fresh browser context signed in through the
  Hub's login form (DummyAuthenticator: any password) and its OAuth redirect back.
- ``shot(page, name)``: a full-page screenshot in ``test-artifacts/dashboard/NAME.png``.

The Hub's OAuth token for the service carries only the scopes listed in the service's
``oauth_client_allowed_scopes``; ``OAUTH_SCOPES`` are added here when ``configure_hub``
does not set them, so that the admin's browser session carries the admin scope.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sqlite3
import struct
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.hub import REPO
from fixtures.servers import S3Server, ServerUnavailable
from fixtures.service import PREFIX, Service, start_hub_with_service
from hometier.lifecycle.context import QUARANTINE_DIR
from hometier.store import open_store
from reliability.faultproxy import FaultProxy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
USERS = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "oscar", "peggy", "trent", "ops",
)  # fmt: skip
ACTIVE = ("erin", "frank", "grace", "heidi", "oscar", "peggy", "trent", "mallory")
ARCHIVED = ("alice", "ivan", "judy")


def _png(size: int = 16) -> bytes:
    """A real ``size`` × ``size`` PNG (one colour), made here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xf3\x76\x26" * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = _png()
HTML_FILE = b"<html><script>document.title='pwned'</script><b>bold</b></html>\n"
SVG_FILE = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_REASON = "<script>document.title='pwned'</script>"
ODD_NAME = b"caf\xe9.txt"
"""A Latin-1 file name in bob's home: not UTF-8."""
ODD_CONTENT = b"named in latin-1\n"
OAUTH_SCOPES = [
    "custom:hometier:admin",
    "custom:hometier:read!user",
    "custom:hometier:restore!user",
    "custom:hometier:lease!user",
]
EXTRA_CONFIG = (
    "for _s in c.JupyterHub.services:\n"
    "    if _s['name'] == 'hometier' and not _s.get('oauth_client_allowed_scopes'):\n"
    f"        _s['oauth_client_allowed_scopes'] = {OAUTH_SCOPES!r}\n"
)


@dataclass
class Dash:
    svc: Service
    proxy: FaultProxy
    store_url: str
    bob_notes_v1: bytes = b""
    bob_notes_v2: bytes = b""
    alice_files: dict[str, bytes] = field(default_factory=dict)
    carol_error: str = ""
    hook: list[dict[str, Any]] = field(default_factory=list)
    """What the service's notification webhook received (``HOMETIER_WEBHOOK_URL``)."""

    @property
    def base(self) -> str:
        """The dashboard through the Hub's proxy, as a browser reaches it."""
        return f"{self.svc.hub.url}{PREFIX}"

    def login(self, browser: Any, user: str, width: int = 1440) -> Any:
        """A new context (its own cookies) signed in as ``user``, ``width`` pixels wide
        (390: a phone, with touch and its pixel ratio); returns its page."""
        phone = width < 500
        context = browser.new_context(
            accept_downloads=True,
            viewport={"width": width, "height": 844 if phone else 900},
            is_mobile=phone,
            has_touch=phone,
            device_scale_factor=3 if phone else 1,
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(f"{self.base}/")
        # Not signed in: the service sends the browser to the Hub's OAuth, which asks
        # for the Hub's login first.
        page.wait_for_selector("#username_input")
        assert "/hub/login" in page.url, page.url
        page.fill("#username_input", user)
        page.fill("#password_input", "any password")
        page.click("#login_submit")
        page.wait_for_url(f"{self.base}/")
        return page

    stop_hook: Any = None

    def db_scalar(self, sql: str) -> Any:
        """One value read from the service's state database (read-only)."""
        con = sqlite3.connect(f"file:{self.svc.root / 'state.db'}?mode=ro", uri=True)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()

    def home_state(self, user: str) -> str:
        status, doc = self.svc.call("GET", f"/api/homes/{user}", self.svc.user_token("ops"))
        assert status == 200, doc
        return str(doc["state"])


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    """A screenshot of the whole page (or of what the viewport shows)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _cli(svc: Service, *args: str, ok: bool = True) -> str:
    done = svc.cli(*args, check=False)
    if ok:
        assert done.returncode == 0, f"hometier {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def _write(home: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _age(home: Path, days: int = 40) -> None:
    """Make every file and folder of ``home`` look ``days`` old, so that the archiver's
    scan sees an idle home and measures it whole."""
    when = time.time() - days * 86400
    for path in [*home.rglob("*"), home]:
        os.utime(path, (when, when), follow_symlinks=False)


def _webhook(into: list[dict[str, Any]]) -> tuple[str, Any]:
    """A notification receiver on 127.0.0.1 that appends each JSON body to ``into``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            into.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}/notify", stop


def _pack_keys(store_url: str) -> set[str]:
    """The pack objects in the bucket, read directly (not through the proxy)."""
    return {o.key for o in open_store(store_url).list("packs/")}


def start_dash(root: Path, s3: S3Server) -> Dash:
    if not s3.running:
        s3.start_s3()
    proxy = FaultProxy(s3.endpoint, seed=11)
    store_url = s3.url(f"dash-{uuid.uuid4().hex}")
    received: list[dict[str, Any]] = []
    hook_url, stop_hook = _webhook(received)
    try:
        with warnings.catch_warnings():
            # ``Service.start`` hands service.log to the child and drops its file object.
            warnings.simplefilter("ignore", ResourceWarning)
            svc = start_hub_with_service(root, extra_config=EXTRA_CONFIG)
    except BaseException:
        proxy.close()
        stop_hook()
        raise
    try:
        svc.stop()  # started on a folder: move it to S3 behind the proxy
        dash = Dash(svc, proxy, store_url, hook=received, stop_hook=stop_hook)
        svc.env.update(
            HOMETIER_STORE=store_url, AWS_ENDPOINT_URL=proxy.url, HOMETIER_WEBHOOK_URL=hook_url
        )
        svc.hub.create_users(*USERS)
        # bob: two snapshots, notes.txt edited in between.
        dash.bob_notes_v1 = b"bob's notes, first version\n" + bytes(range(256)) * 50
        dash.bob_notes_v2 = b"bob's notes, second version, longer\n" * 10
        _write(
            svc.homes / "bob",
            {
                "notes.txt": dash.bob_notes_v1,
                "project/analysis.ipynb": b'{"cells": [], "nbformat": 4}',
                "project/data/raw.csv": b"a,b\n1,2\n" * 5000,
                "plot.png": PNG,
                "page.html": HTML_FILE,
                "logo.svg": SVG_FILE,
                "big.log": b"log line\n" * 50_000,
            },
        )
        (svc.homes / "bob" / os.fsdecode(ODD_NAME)).write_bytes(ODD_CONTENT)
        _cli(svc, "backup", "bob")
        time.sleep(0.01)  # distinct snapshot times
        (svc.homes / "bob" / "notes.txt").write_bytes(dash.bob_notes_v2)
        _cli(svc, "backup", "bob")
        # alice, ivan, judy: archived, restorable from the bucket only.
        dash.alice_files = {
            "thesis.tex": b"\\documentclass{article}\n" * 400,
            "results/table.csv": os.urandom(200_000),
        }
        _write(svc.homes / "alice", dash.alice_files)
        for user in ARCHIVED[1:]:
            _write(svc.homes / user, {"work/report.md": f"# {user}\n".encode() * 2000})
        for user in ARCHIVED:
            _cli(svc, "archive", user)
        shutil.rmtree(svc.homes / QUARANTINE_DIR, ignore_errors=True)
        # carol: archived, her packs lost, a restore tried: failed.
        _write(svc.homes / "carol", {"lost.bin": os.urandom(300_000)})
        before = _pack_keys(store_url)
        _cli(svc, "archive", "carol")
        shutil.rmtree(svc.homes / QUARANTINE_DIR, ignore_errors=True)
        lost = _pack_keys(store_url) - before
        assert lost, "carol's archive wrote no pack"
        store = open_store(store_url)
        for key in lost:
            store.delete(key)
        dash.carol_error = _cli(svc, "restore", "carol", ok=False)
        # dave: active, for the admin to archive from the dashboard; the others active.
        _write(svc.homes / "dave", {"scratch.txt": b"dave was here\n" * 100})
        for i, user in enumerate(ACTIVE):
            _write(svc.homes / user, {"notebook.ipynb": b"{}" * (1000 * (i + 1))})
        for user in ("bob", "dave", *ACTIVE):
            _age(svc.homes / user)
        # A home whose name and exemption reason are HTML.
        _cli(svc, "exempt", HOSTILE, "--reason", HOSTILE_REASON)
        _cli(svc, "serve", "--once", "--dry-run")
        _cli(svc, "lease", "mallory", "--holder", "nightly-job")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            svc.start()
        return dash
    except BaseException:
        svc.close()
        proxy.close()
        stop_hook()
        raise


@pytest.fixture(scope="module", name="dash")
def dash_fixture(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Dash]:
    try:
        started = start_dash(tmp_path_factory.mktemp("dash"), s3_server)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.svc.close()
        started.proxy.close()
        started.stop_hook()


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (scripts/test does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (scripts/test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
