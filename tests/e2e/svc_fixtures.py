"""One real JupyterHub + ``hometier serve`` per test module, with homes to read and restore.

The ``api`` fixture (module scope) starts ``fixtures.service.start_hub_with_service`` once
and sets up:

- users ``alice``, ``bob`` and ``ops``; ``ops`` is the hometier admin (``configure_hub``'s
  ``admin_users=("ops",)``);
- two more Hub services, ``plain`` (no role at all) and ``plain-access`` (only
  ``access:services!service=hometier``): service tokens without hometier scopes;
- homes for alice and bob written by ``make_home``: small and larger files, an empty
  file, nested folders, symlinks (one pointing out of the home), a file and a folder whose
  names are not UTF-8. ``Api.files[user]`` keeps what was written (relative path bytes →
  content, symlinks as ``Link(target)``);
- bob's home backed up twice with ``hometier backup bob``, his notebook edited in between
  (``Api.bob_notebook_v1``/``_v2``): two snapshots, the home stays active;
- alice archived with ``hometier archive alice``: her files only in the repository;
- both homes registered in the database (``hometier serve --once --dry-run``, the
  archiver's scan without archiving) and each holding a lease taken with
  ``hometier lease USER --holder fixture`` (``Api.fixture_leases``).

Every module gets its own Hub and service, so what one module changes (restores, leases,
whatever the fuzzer did) never leaks into another. A module imports the fixture with
``from e2e.svc_fixtures import api_fixture  # noqa: F401`` (its pytest name is ``api``;
the other Python name keeps ruff from seeing each ``api`` argument as a redefinition).
Starting takes about 10 s: the Hub's wait for the hometier service (30 s by default, although the
service is only started after the Hub answers) is cut to 1 s through ``extra_config``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fixtures.servers import ServerUnavailable
from fixtures.service import PREFIX, Service, start_hub_with_service

USERS = ("alice", "bob", "ops")
ODD_FILE = b"caf\xe9.txt"
"""A Latin-1 file name: not UTF-8."""
ODD_DIR = b"d\xefr"
"""A Latin-1 folder name."""
NESTED = b"project/sub"
NOTEBOOK = b"project/analysis.ipynb"
RESTORE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Link:
    """A symlink in ``Api.files``."""

    target: bytes


Files = dict[bytes, "bytes | Link"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def path_query(rel: bytes) -> str:
    """``path=...`` for a UTF-8 name, else ``path_b64=...``."""
    try:
        return "path=" + quote(rel.decode("utf-8"), safe="")
    except UnicodeDecodeError:
        return "path_b64=" + quote(b64(rel), safe="")


@dataclass
class Api:
    """The running service and what the tests need around it."""

    svc: Service
    tokens: dict[str, str] = field(repr=False)
    """``alice``, ``bob``, ``ops``: user tokens with the user's full permissions;
    ``plain``, ``plain-access``: service tokens without hometier scopes;
    ``hub-admin``: the Hub's ``admin`` role (a service), but not hometier's admin."""
    files: dict[str, Files] = field(repr=False)
    """What each home held at its last snapshot."""
    fixture_leases: dict[str, str] = field(default_factory=dict)
    """The lease each home holds from ``hometier lease USER --holder fixture``."""
    bob_notebook_v1: bytes = b""
    bob_notebook_v2: bytes = b""

    # --- HTTP ----------------------------------------------------------------------

    def call(
        self, method: str, path: str, token: str | None, body: Any = None, raw: bool = False
    ) -> tuple[int, Any]:
        """``Service.call``: (status, parsed JSON or bytes)."""
        return self.svc.call(method, path, token, body, raw)

    def fetch(
        self,
        method: str,
        path: str,
        token: str | None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with http.client: (status, headers lower-cased, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.svc.port, timeout=60)
        try:
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = f"token {token}"
            conn.request(method, PREFIX + path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def ok(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        """A call that must succeed (2xx); returns its JSON. Default token: ops."""
        status, doc = self.call(method, path, token or self.tokens["ops"], body)
        assert 200 <= status < 300, (method, path, status, doc)
        return doc

    def home(self, user: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/homes/{user}"))

    def snapshots(self, user: str) -> list[dict[str, Any]]:
        """Newest first, as the API lists them."""
        return list(self.ok("GET", f"/api/homes/{user}/snapshots")["snapshots"])

    def wait_restore(self, user: str, token: str | None = None) -> dict[str, Any]:
        """Poll ``GET restore`` until it is no longer running; returns the last document."""
        deadline = time.monotonic() + RESTORE_TIMEOUT
        while True:
            doc = dict(self.ok("GET", f"/api/homes/{user}/restore", token))
            if doc["state"] != "running":
                return doc
            assert time.monotonic() < deadline, f"restore of {user} still running: {doc}"
            time.sleep(0.1)

    def sse(self, user: str, token: str) -> list[tuple[str, dict[str, Any]]]:
        """Read ``restore/events`` to its end: [(event name, data)] (comments skipped)."""
        status, headers, body = self.fetch("GET", f"/api/homes/{user}/restore/events", token)
        assert status == 200, (status, body[:300])
        assert headers["content-type"].startswith("text/event-stream"), headers
        events = []
        for block in body.decode().split("\n\n"):
            lines = [ln for ln in block.splitlines() if ln and not ln.startswith(":")]
            if not lines:
                continue
            fields = dict(ln.split(": ", 1) for ln in lines)
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
        return events

    # --- the database and the disk, read directly -----------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        uri = f"file:{self.svc.root / 'state.db'}?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            yield con
        finally:
            con.close()

    def events(self, user: str | None = None) -> list[tuple[Any, ...]]:
        """Events (of ``user``) in log order: (id, user, kind, from, to, actor)."""
        sql = "SELECT id, user, kind, from_state, to_state, actor FROM events"
        with self._db() as con:
            if user is None:
                return con.execute(sql + " ORDER BY id").fetchall()
            return con.execute(sql + " WHERE user = ? ORDER BY id", (user,)).fetchall()

    def lease_rows(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every lease (of ``user``), active or not, from the database."""
        sql = (
            "SELECT l.id, h.user, l.holder, l.expires_at, l.released_at FROM leases l "
            "JOIN homes h ON h.id = l.home_id"
        )
        with self._db() as con:
            if user is None:
                rows = con.execute(sql + " ORDER BY l.id").fetchall()
            else:
                rows = con.execute(sql + " WHERE h.user = ? ORDER BY l.id", (user,)).fetchall()
        keys = ("id", "user", "holder", "expires_at", "released_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def home_rows(self) -> list[tuple[Any, ...]]:
        with self._db() as con:
            return con.execute(
                "SELECT user, state, version, exempt, exempt_reason, archived_at, "
                "restored_at, error FROM homes ORDER BY user"
            ).fetchall()

    def disk(self, user: str) -> Files:
        """What ``user``'s home holds now, in the shape of ``Api.files``."""
        return read_tree(self.svc.homes / user)

    def status(self, user: str | None = None) -> Any:
        """``hometier --json status [USER]``: the database's view through the CLI."""
        return json.loads(run_cli(self.svc, "--json", "status", *([user] if user else [])))

    def fingerprint(self) -> dict[str, Any]:
        """Everything a refused request must leave as it was: homes, events, leases,
        restores this process tracks, and the files on the volume."""
        return {
            "homes": self.home_rows(),
            "events": self.events(),
            "leases": self.lease_rows(),
            "restores": {u: self.ok("GET", f"/api/homes/{u}/restore") for u in ("alice", "bob")},
            "disk": {u: self.disk(u) for u in ("alice", "bob")},
        }

    def ensure_archived(self, user: str) -> None:
        """Archive ``user`` again if a test restored it: release its leases, then
        ``hometier archive USER``."""
        if self.home(user)["state"] == "archived":
            return
        for lease in self.ok("GET", f"/api/homes/{user}/leases")["leases"]:
            self.ok("DELETE", f"/api/homes/{user}/leases/{lease['id']}")
        run_cli(self.svc, "archive", user)
        assert self.home(user)["state"] == "archived"

    def log_tail(self, chars: int = 6000) -> str:
        path = self.svc.root / "service.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def run_cli(svc: Service, *args: str) -> str:
    """``hometier ARGS``; fails with its output unless it exits 0."""
    done = svc.cli(*args, check=False)
    assert done.returncode == 0, f"hometier {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def make_home(home: Path, user: str) -> Files:
    """Write a small home; returns relative path → content (or ``Link``)."""
    home.mkdir(parents=True, exist_ok=True)
    files: Files = {
        b"notes.txt": f"notes of {user}\n".encode() * 40,
        b"data.bin": bytes((i * 7 + len(user)) % 251 for i in range(300_000)),
        b"empty.txt": b"",
        NOTEBOOK: json.dumps({"cells": [], "nbformat": 4, "user": user}).encode(),
        NESTED + b"/deep.txt": f"deep down in {user}'s home\n".encode(),
        NESTED + b"/" + ODD_FILE: b"latin-1 named file\n",
        ODD_DIR + b"/inside.txt": b"inside an oddly named folder\n",
        b"link-to-notes": Link(b"notes.txt"),
        b"project/escape": Link(b"../../../../etc/passwd"),
    }
    root = os.fsencode(home)
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, Link):
            os.symlink(content.target, path)
        else:
            with open(path, "wb") as f:
                f.write(content)
    return files


def read_tree(root: str | os.PathLike[str]) -> Files:
    """Regular files and symlinks under ``root`` in the shape of ``make_home``'s result
    (folders are implied by their contents; dot-files hometier leaves are skipped)."""
    base = os.fsencode(root)
    found: Files = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel.startswith(b"."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                found[rel] = Link(os.readlink(path))
            else:
                with open(path, "rb") as f:
                    found[rel] = f.read()
    return found


def _extra_config(tokens: dict[str, str]) -> str:
    return (
        # The fixture starts the service only once the Hub answers: the Hub's default
        # 30 s wait for an external service is pure delay.
        "for _s in c.JupyterHub.services:\n"
        "    if _s['name'] == 'hometier':\n"
        "        _s['timeout'] = 1\n"
        f"c.JupyterHub.services.append({{'name': 'plain', 'api_token': {tokens['plain']!r}}})\n"
        "c.JupyterHub.services.append("
        f"{{'name': 'plain-access', 'api_token': {tokens['plain-access']!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'plain-access', 'services': ['plain-access'],"
        " 'scopes': ['access:services!service=hometier']})\n"
    )


def start_api(root: Path) -> Api:
    service_tokens = {"plain": secrets.token_hex(32), "plain-access": secrets.token_hex(32)}
    with warnings.catch_warnings():
        # ``Service.start`` opens service.log for the child and drops the file object;
        # its ResourceWarning would otherwise fail some later test (filterwarnings=error).
        warnings.simplefilter("ignore", ResourceWarning)
        svc = start_hub_with_service(root, extra_config=_extra_config(service_tokens))
    try:
        svc.hub.create_users(*USERS)
        files = {user: make_home(svc.homes / user, user) for user in ("alice", "bob")}
        api = Api(svc=svc, tokens={}, files=files)
        nb = svc.homes / "bob" / os.fsdecode(NOTEBOOK)
        api.bob_notebook_v1 = nb.read_bytes()
        run_cli(svc, "backup", "bob")
        api.bob_notebook_v2 = json.dumps({"cells": [{"source": "v2"}], "nbformat": 4}).encode()
        nb.write_bytes(api.bob_notebook_v2)
        files["bob"][NOTEBOOK] = api.bob_notebook_v2
        run_cli(svc, "backup", "bob")
        run_cli(svc, "archive", "alice")
        run_cli(svc, "serve", "--once", "--dry-run")
        for user in ("alice", "bob"):
            out = run_cli(svc, "--json", "lease", user, "--holder", "fixture", "--for", "6h")
            api.fixture_leases[user] = json.loads(out)["lease"]
        api.tokens = {user: svc.user_token(user) for user in USERS}
        api.tokens.update(service_tokens)
        api.tokens["hub-admin"] = svc.hub.admin_token
        return api
    except BaseException:
        svc.close()
        raise


@pytest.fixture(scope="module", name="api")
def api_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A Hub and a service: alice archived, bob active with two snapshots."""
    try:
        started = start_api(tmp_path_factory.mktemp("api"))
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.svc.close()
