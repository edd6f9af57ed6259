"""Fixtures of the dashboard's browser tests: a real Hub + service with homes in every
state, and Debian's headless Chromium driven by Playwright.

- ``dash`` (module scope): ``fixtures.service.start_hub_with_service`` with users
  ``alice``, ``bob``, ``carol``, ``dave`` and ``ops`` (hometier's admin), and real data made with
  the ``hometier`` CLI:

  - ``bob``: active, two snapshots; ``notes.txt`` changed between them
    (``Dash.bob_notes_v1`` is the old version, byte for byte); a file whose name is
    not UTF-8 (``ODD_NAME``);
  - ``alice``: archived (her quarantine folder removed, so a restore reads the bucket);
  - ``carol``: archived, then the packs of her snapshot deleted from the repository and
    a restore attempted: ``failed``, with the restore's error;
  - ``dave``: active, for the admin to archive from the dashboard;
  - ``HOSTILE``: a home whose name is HTML, exempt with a reason that is a script tag.

  bob's and dave's files are made 40 days old, so that ``hometier serve --once
  --dry-run`` (the archiver's scan, archiving nothing) registers and measures them.

- ``browser`` (module scope): Chromium from ``/usr/bin/chromium`` (``apt-get install
  chromium``; Playwright's own browser download is never used). Skips when Playwright or
  the binary is missing (CI=true makes that a failure; ``scripts/test`` installs both).
- ``Dash.login(browser, user)``: a fresh browser context signed in through the Hub's login
  form (DummyAuthenticator: any password) and its OAuth redirect back to the service.
- ``shot(page, name)``: a full-page screenshot in ``test-artifacts/dashboard/NAME.png``.

The Hub's OAuth token for the service carries only the scopes listed in the service's
``oauth_client_allowed_scopes``; ``OAUTH_SCOPES`` are added here when ``configure_hub``
does not set them, so that the admin's browser session carries the admin scope.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.hub import REPO
from fixtures.servers import ServerUnavailable
from fixtures.service import PREFIX, Service, start_hub_with_service
from hometier.lifecycle.context import QUARANTINE_DIR

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
USERS = ("alice", "bob", "carol", "dave", "ops")
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
    bob_notes_v1: bytes = b""
    bob_notes_v2: bytes = b""
    alice_files: dict[str, bytes] = field(default_factory=dict)
    carol_error: str = ""

    @property
    def base(self) -> str:
        """The dashboard through the Hub's proxy, as a browser reaches it."""
        return f"{self.svc.hub.url}{PREFIX}"

    def login(self, browser: Any, user: str) -> Any:
        """A new context (its own cookies) signed in as ``user``; returns its page."""
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
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


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
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


def _repo_files(svc: Service) -> set[Path]:
    repo = svc.root / "repo"
    return {p for p in repo.rglob("*") if p.is_file()} if repo.exists() else set()


def start_dash(root: Path) -> Dash:
    with warnings.catch_warnings():
        # ``Service.start`` hands service.log to the child and drops its file object.
        warnings.simplefilter("ignore", ResourceWarning)
        svc = start_hub_with_service(root, extra_config=EXTRA_CONFIG)
    try:
        svc.hub.create_users(*USERS)
        dash = Dash(svc)
        # bob: two snapshots, notes.txt edited in between.
        dash.bob_notes_v1 = b"bob's notes, first version\n" + bytes(range(256)) * 50
        dash.bob_notes_v2 = b"bob's notes, second version, longer\n" * 10
        _write(
            svc.homes / "bob",
            {
                "notes.txt": dash.bob_notes_v1,
                "project/analysis.ipynb": b'{"cells": [], "nbformat": 4}',
                "project/data/raw.csv": b"a,b\n1,2\n" * 5000,
            },
        )
        (svc.homes / "bob" / os.fsdecode(ODD_NAME)).write_bytes(ODD_CONTENT)
        _cli(svc, "backup", "bob")
        time.sleep(0.01)  # distinct snapshot times
        (svc.homes / "bob" / "notes.txt").write_bytes(dash.bob_notes_v2)
        _cli(svc, "backup", "bob")
        # alice: archived, restorable from the bucket only.
        dash.alice_files = {
            "thesis.tex": b"\\documentclass{article}\n" * 400,
            "results/table.csv": os.urandom(200_000),
        }
        _write(svc.homes / "alice", dash.alice_files)
        _cli(svc, "archive", "alice")
        shutil.rmtree(svc.homes / QUARANTINE_DIR, ignore_errors=True)
        # carol: archived, her packs lost, a restore tried: failed.
        _write(svc.homes / "carol", {"lost.bin": os.urandom(300_000)})
        before = _repo_files(svc)
        _cli(svc, "archive", "carol")
        shutil.rmtree(svc.homes / QUARANTINE_DIR, ignore_errors=True)
        lost = [
            p for p in _repo_files(svc) - before if "pack" in p.relative_to(svc.root).as_posix()
        ]
        assert lost, "carol's archive wrote no pack"
        for p in lost:
            p.unlink()
        dash.carol_error = _cli(svc, "restore", "carol", ok=False)
        # dave: active, for the admin to archive from the dashboard.
        _write(svc.homes / "dave", {"scratch.txt": b"dave was here\n" * 100})
        _age(svc.homes / "bob")
        _age(svc.homes / "dave")
        # A home whose name and exemption reason are HTML.
        _cli(svc, "exempt", HOSTILE, "--reason", HOSTILE_REASON)
        _cli(svc, "serve", "--once", "--dry-run")
        return dash
    except BaseException:
        svc.close()
        raise


@pytest.fixture(scope="module", name="dash")
def dash_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    try:
        started = start_dash(tmp_path_factory.mktemp("dash"))
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.svc.close()


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
