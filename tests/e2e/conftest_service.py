"""Helpers of the restore-at-login end-to-end tests (``test_spawn_restore``,
``test_login_storm``, ``test_volume_stream``); plain functions, imported by those modules.

- ``start_service(root, spawn_hook=..., extra_config=...)``: like
  ``fixtures.service.start_hub_with_service``, but ``configure_hub`` can be told not to
  install the pre-spawn hook (the spawner-mixin path restores in ``start()`` instead);
  ``extra_config`` comes after ``configure_hub``. Skips when the Hub's parts are missing.
- ``make_home(path, ...)``: a home of random (incompressible) files in nested folders,
  with nanosecond times, a symlink, an executable, no hidden names (the single-user
  server's contents API hides those).
- ``tree_manifest(path)``: ``treeutil.snapshot_of_tree`` without the root and without the
  hidden entries a single-user server adds to a home when it starts (``.local``, …).
- ``archive(svc, user)``: archive through the CLI, then remove the quarantine folder
  (what the purge does after ``quarantine_for``), so the next restore comes from the
  repository.
- ``ProgressReader``: a thread that reads the Hub's spawn progress stream (SSE).
- ``ContentsClient``: the single-user server's contents API through the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.hub import Hub, free_port, start_hub
from fixtures.servers import ServerUnavailable
from fixtures.service import PREFIX, Service
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import QUARANTINE_DIR
from hometier.repo.snapshot import user_key
from treeutil import HARDLINKS, set_times, snapshot_of_tree

KiB = 1024
MiB = 1024 * KiB


# --- the Hub and the service -----------------------------------------------------------


def start_service(
    root: Path,
    *,
    spawn_hook: bool = True,
    extra_config: str = "",
    admin_users: tuple[str, ...] = ("ops",),
    store: str | None = None,
    db: str | None = None,
) -> Service:
    """A real JupyterHub with ``configure_hub(c, ..., spawn_hook=spawn_hook)`` and a real
    ``hometier serve --no-loop`` registered with it; skips if the Hub's parts are missing.

    The service starts first, on a Hub port picked here: JupyterHub waits (up to 30 s)
    for every external service with a URL to answer before it serves its API, so a
    service started after the Hub costs those 30 s. The Hub config can use
    ``HOMETIER_URL`` (the service's direct URL).
    """
    (root / "homes").mkdir(parents=True, exist_ok=True)
    port, hub_port = free_port(), free_port()
    token = secrets.token_hex(32)
    service_url = f"http://127.0.0.1:{port}{PREFIX}"
    config = (
        "from hometier.hub.config import configure_hub\n"
        f"configure_hub(c, service_url={service_url!r}, api_token={token!r},"
        f" admin_users={list(admin_users)!r}, spawn_hook={spawn_hook!r})\n"
        f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'\n"
        f"HOMETIER_URL = {service_url!r}\n" + extra_config
    )
    env = dict(
        os.environ,
        JUPYTERHUB_API_TOKEN=token,
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{hub_port}/hub/api",
        JUPYTERHUB_CLIENT_ID="service-hometier",
        JUPYTERHUB_SERVICE_NAME="hometier",
        JUPYTERHUB_SERVICE_PREFIX=f"{PREFIX}/",
        JUPYTERHUB_BASE_URL="/",
        JUPYTERHUB_OAUTH_CALLBACK_URL=f"{PREFIX}/oauth_callback",
        HOMETIER_HOMES=str(root / "homes"),
        HOMETIER_STORE=store or f"file://{root / 'repo'}",
        HOMETIER_DB=db or f"sqlite:///{root / 'state.db'}",
    )
    svc = Service(None, root, port, token, env)  # type: ignore[arg-type] # the Hub comes next
    with warnings.catch_warnings():
        # ``Service.start`` drops its log file object once the child holds it.
        warnings.simplefilter("ignore", ResourceWarning)
        svc.start()
    try:
        hub = start_hub(root / "homes", extra_config=config)
    except ServerUnavailable as exc:
        svc.stop()
        pytest.skip(str(exc))
    except BaseException:
        svc.stop()
        raise
    hub.ports["hub"] = hub_port
    svc.hub = hub
    return svc


def service_log(svc: Service, chars: int = 3000) -> str:
    path = svc.root / "service.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# --- homes ------------------------------------------------------------------------------


def make_home(
    path: Path,
    *,
    small_files: int = 200,
    small_size: tuple[int, int] = (100, 8 * KiB),
    big_files: tuple[int, ...] = (),
    folders: int = 10,
    seed: int = 0,
) -> int:
    """Fill ``path`` (created) with random files; returns the bytes written.

    ``small_files`` files of ``small_size`` bytes spread over ``folders`` folders (some
    nested), and one file per entry of ``big_files`` (its size) at the top; plus an
    executable script, an empty file, a relative symlink and an empty folder.
    """
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    dirs = []
    for i in range(folders):
        d = path / f"project-{i:02d}"
        if i % 3 == 2:
            d = path / f"project-{i - 1:02d}" / f"sub-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
    total = 0
    for i in range(small_files):
        data = rng.randbytes(rng.randint(*small_size))
        (dirs[i % len(dirs)] / f"file-{i:05d}.dat").write_bytes(data)
        total += len(data)
    for i, size in enumerate(big_files):
        (path / f"big-{i}.bin").write_bytes(rng.randbytes(size))
        total += size
    (path / "notes.md").write_text(f"# notes of {path.name}\n" + "line\n" * 100)
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(path / "run.sh", 0o755)
    (path / "empty.txt").write_bytes(b"")
    (path / "empty-folder").mkdir(exist_ok=True)
    os.symlink("notes.md", path / "notes-link.md")
    set_times(os.fsencode(path), seed=seed)
    return total


def _visible(rel: bytes) -> bool:
    return not rel.startswith(b".")


def tree_manifest(path: Path) -> dict[Any, Any]:
    """What a restore must bring back, entry by entry, without the root folder and
    without top-level hidden entries (which a single-user server creates when it starts).

    Atimes are left out: the single-user server reads the files it lists.
    """
    snap = snapshot_of_tree(path, atime=False, include_root=False)
    out = {k: v for k, v in snap.items() if k == HARDLINKS or _visible(k)}
    out[HARDLINKS] = {g for g in snap[HARDLINKS] if all(_visible(p) for p in g)}
    return out


def file_hashes(path: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha256)}`` of every visible regular file under ``path``."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = os.path.relpath(dirpath, path)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.islink(full):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            data = Path(full).read_bytes()
            out[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def quarantine_dirs(svc: Service, user: str) -> list[Path]:
    root = svc.homes / QUARANTINE_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(user_key(user) + "."))


def archive(svc: Service, user: str, *, purge: bool = True) -> dict[str, Any]:
    """Archive ``user``'s home with the CLI; with ``purge`` remove its quarantine folder
    (the purge after ``quarantine_for``), so a restore must read the repository."""
    done = svc.cli("--json", "archive", user, check=False)
    assert done.returncode == 0, f"archive of {user} failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["outcome"] == "archived", result
    if purge:
        for q in quarantine_dirs(svc, user):
            shutil.rmtree(q)
    home = svc.homes / user
    left = sorted(os.listdir(home)) if home.is_dir() else []
    assert left in ([], [NOTICE_NAME]), f"home of {user} still holds {left}"
    return result


def status(svc: Service, user: str) -> dict[str, Any]:
    done = svc.cli("--json", "status", user)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


# --- the Hub's spawn progress stream ----------------------------------------------------


@dataclass
class ProgressReader:
    """Reads ``GET /hub/api/users/USER/server/progress`` (server-sent events) in a thread
    until the ready or failed event; ``events`` are ``(monotonic time, event)``."""

    hub: Hub
    user: str
    timeout: float = 120.0
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None
    status: int | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ProgressReader:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.user}")
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.ports["public"], timeout=30)
        try:
            path = f"/hub/api/users/{urllib.parse.quote(self.user)}/server/progress"
            conn.request(
                "GET",
                path,
                headers={
                    "Authorization": f"token {self.hub.admin_token}",
                    "Accept": "text/event-stream",
                },
            )
            resp = conn.getresponse()
            self.status = resp.status
            if resp.status != 200:
                self.error = f"HTTP {resp.status}: {resp.read()[:500]!r}"
                return
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                line = resp.readline()
                if not line:
                    return
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[len(b"data:") :])
                self.events.append((time.monotonic(), event))
                if event.get("ready") or event.get("failed"):
                    return
            self.error = "timed out"
        except (OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def join(self, timeout: float | None = None) -> list[dict[str, Any]]:
        assert self._thread is not None
        self._thread.join(self.timeout if timeout is None else timeout)
        assert not self._thread.is_alive(), "the progress stream did not end"
        return [e for _, e in self.events]

    @property
    def messages(self) -> list[str]:
        return [str(e.get("message", "")) for _, e in self.events]


def request_spawn(hub: Hub, user: str, timeout: float = 30.0) -> tuple[int, Any]:
    """``POST /users/USER/server``; returns (status, body) whatever the status."""
    path = f"/users/{urllib.parse.quote(user)}/server"
    return hub.request("POST", path, expect=(201, 202, 400, 500, 503), timeout=timeout)


def wait_ready(hub: Hub, user: str, timeout: float = 120.0) -> dict[str, Any] | None:
    """The user's default server model once ready; None once it is neither pending nor
    ready (the spawn failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = hub.user(user).get("servers", {}).get("")
        if server and server.get("ready"):
            return dict(server)
        if server is None:
            return None
        time.sleep(0.2)
    raise AssertionError(f"{user}'s server neither ready nor failed in {timeout:.0f} s")


# --- the single-user server's contents API ---------------------------------------------


@dataclass
class ContentsClient:
    """``{hub.url}/user/USER/api/...`` with a token of USER (``access:servers!user=USER``)."""

    hub: Hub
    user: str
    token: str

    def get(self, path: str, **params: str) -> Any:
        quoted = urllib.parse.quote(path.strip("/"))
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.hub.url}/user/{urllib.parse.quote(self.user)}/api/{quoted}{query}"
        req = urllib.request.Request(url, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get("status")
        return doc

    def walk(self) -> dict[str, dict[str, Any]]:
        """Every visible entry, recursively: ``{path: directory-listing model}``."""
        out: dict[str, dict[str, Any]] = {}
        todo = [""]
        while todo:
            folder = todo.pop()
            model = self.get(f"contents/{folder}", content="1")
            assert model["type"] == "directory", model
            for child in model["content"]:
                out[child["path"]] = child
                if child["type"] == "directory":
                    todo.append(child["path"])
        return out

    def file_bytes(self, path: str) -> bytes:
        model = self.get(f"contents/{path}", content="1", format="base64", type="file")
        assert model["format"] == "base64", model
        return base64.b64decode(model["content"])
