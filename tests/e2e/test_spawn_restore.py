"""Restore at login, end to end: a real JupyterHub (configurable-http-proxy from npm,
DummyAuthenticator, SimpleLocalProcessSpawner) with hometier registered by
``configure_hub`` and a real ``hometier serve``, once with the default pre-spawn hook
(``hook``) and once with the spawner mixin instead (``mixin``:
``make_spawner_class(SimpleLocalProcessSpawner)``, ``configure_hub(..., spawn_hook=False)``).
Both show the restore's progress on the spawn page.

A user's home (~50 MB, a few thousand small files and a few big ones) is archived and
its quarantine purged, so it is gone from disk and must come back from the repository.
Starting the user's server through the Hub API shows the restore on the spawn progress
stream, starts the single-user server only after the restore finished, and the server's
contents API lists the restored files, identical to the original.

A broken repository (a corrupted pack) fails the spawn with a readable message and
leaves the home archived, not half-written; once the pack is repaired, a new spawn
restores it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest_service import (
    ContentsClient,
    MiB,
    ProgressReader,
    archive,
    file_hashes,
    make_home,
    request_spawn,
    service_log,
    start_service,
    status,
    tree_manifest,
    wait_ready,
)
from fixtures.service import Service
from hometier.lifecycle.activity import NOTICE_NAME
from treeutil import diff_trees

pytestmark = [pytest.mark.hub, pytest.mark.slow]

HOOK_CONFIG = """
# POST /users/U/server answers 202 at once, so the test reads the progress stream
# while the spawn (and the restore) runs.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""

MIXIN_CONFIG = """
from jupyterhub.spawner import SimpleLocalProcessSpawner
from hometier.hub.spawn_hook import make_spawner_class

c.JupyterHub.spawner_class = make_spawner_class(SimpleLocalProcessSpawner)
c.HometierSpawnerMixin.hometier_url = HOMETIER_URL
c.HometierSpawnerMixin.hometier_timeout = 120.0
# POST /users/U/server answers 202 at once, so the test reads the progress stream
# while the spawn (and the restore) runs.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Service]:
    mixin = getattr(request, "param", "hook") == "mixin"
    service = start_service(
        tmp_path_factory.mktemp("spawn-restore"),
        spawn_hook=not mixin,
        extra_config=MIXIN_CONFIG if mixin else HOOK_CONFIG,
    )
    try:
        yield service
    finally:
        service.close()


def _packs(svc: Service) -> set[Path]:
    return {p for p in (svc.root / "repo" / "packs").rglob("*") if p.is_file()}


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _expected_listing(home: Path) -> dict[str, tuple[str, int | None]]:
    """What the contents API should list for ``home``: ``{path: (type, size)}``; it
    shows a link to a file as a file, with the link's own size."""
    out: dict[str, tuple[str, int | None]] = {}
    for dirpath, dirnames, filenames in os.walk(home):
        rel_dir = os.path.relpath(dirpath, home)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("directory", None)
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("file", os.lstat(full).st_size)
    return out


def test_spawner_class_traits_are_usable() -> None:
    """``make_spawner_class`` must give a spawner whose hometier options work (default
    and configured), as docs/howto/local-spawners.md documents them."""
    from jupyterhub.spawner import SimpleLocalProcessSpawner
    from traitlets.config import Config

    from hometier.hub.spawn_hook import make_spawner_class

    cls = make_spawner_class(SimpleLocalProcessSpawner)
    assert cls().hometier_url == "http://127.0.0.1:8765/services/hometier"
    cfg = Config()
    cfg.HometierSpawnerMixin.hometier_url = "http://hometier.example:8765/services/hometier"
    cfg.HometierSpawnerMixin.hometier_timeout = 42.0
    spawner = cls(config=cfg)
    assert spawner.hometier_url == "http://hometier.example:8765/services/hometier"
    assert spawner.hometier_timeout == 42.0


def params_of(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["svc"])


@pytest.mark.parametrize("svc", ["hook", "mixin"], indirect=True)
def test_spawn_restores_the_home_before_the_server_starts(
    svc: Service, request: pytest.FixtureRequest
) -> None:
    user = "alice"
    home = svc.homes / user
    if params_of(request) == "hook":  # the default: the full-size home
        written = make_home(
            home, small_files=3000, small_size=(100, 4096), big_files=(12 * MiB,) * 3, folders=30
        )
        assert written > 40 * MiB
    else:  # the same path, through the mixin: a smaller home is enough
        make_home(home, small_files=300, small_size=(100, 4096), big_files=(3 * MiB,), folders=6)
    original = tree_manifest(home)
    hashes = file_hashes(home)
    listing = _expected_listing(home)

    archive(svc, user)  # the quarantine is purged: only the repository has the files
    assert not home.exists() or os.listdir(home) in ([], [NOTICE_NAME])
    svc.hub.create_users(user)

    status_code, _ = request_spawn(svc.hub, user)
    assert status_code in (201, 202)
    reader = ProgressReader(svc.hub, user).start()
    server = wait_ready(svc.hub, user)
    events = reader.join()
    assert reader.error is None, reader.error
    assert server is not None, f"spawn failed: {events}\n{svc.hub.log_tail()}"
    print("progress events:", *events, sep="\n  ")

    # The progress stream showed the restore, in order, before the spawner's own events.
    messages = reader.messages
    # A restore may be back before its first progress report (progress is reported at
    # most every 0.2 s, and a restore without thread hand-offs can finish within that):
    # it then shows as "Checking your files" only, still before "Your files are back".
    started = ("Restoring your files", "Checking your files")
    restoring = [i for i, m in enumerate(messages) if m.startswith(started)]
    back = [i for i, m in enumerate(messages) if m.startswith("Your files are back")]
    spawning = [i for i, m in enumerate(messages) if m.startswith("Spawning server")]
    assert restoring, messages
    assert back, messages
    assert spawning, messages
    assert restoring[0] < back[0] < spawning[0], messages
    assert events[-1].get("ready") is True, events[-1]
    progress = [e["progress"] for e in events if "progress" in e]
    assert progress == sorted(progress), f"progress went backwards: {progress}"

    # The restore came from the repository and finished before the server started.
    token = svc.user_token(user)
    code, job = svc.call("GET", f"/api/homes/{user}/restore", token)
    assert code == 200, job
    assert job["state"] == "done", job
    assert job["result"]["source"] == "bucket", job
    assert job["result"]["outcome"] == "restored", job
    st = status(svc, user)
    assert st["state"] == "active", st
    assert st["restored_at"], st

    contents = ContentsClient(svc.hub, user, svc.user_token(user, [f"access:servers!user={user}"]))
    started = _epoch(contents.status()["started"])
    requested = _epoch(server["started"])  # the Hub stamps it when the spawn is requested
    assert requested <= job["started"] <= job["finished"] < started, (
        f"requested {requested}, restore {job['started']}..{job['finished']}, "
        f"server process started {started}"
    )

    # The single-user server sees the restored files: every name, type and size...
    seen = contents.walk()
    got = {
        path: (m["type"], m["size"] if m["type"] != "directory" else None)
        for path, m in seen.items()
    }
    missing = sorted(set(listing) - set(got))[:10]
    extra = sorted(set(got) - set(listing))[:10]
    assert got == listing, f"missing {missing}, unexpected {extra}"
    # ...and the bytes of the big files, the symlink and a sample of the small ones.
    rng = random.Random(7)
    small = sorted(p for p in hashes if p.startswith("project-"))
    sample = sorted(
        {p for p in hashes if not p.startswith("project-")} | set(rng.sample(small, 60))
    )
    for path in sample:
        data = contents.file_bytes(path)
        assert (len(data), hashlib.sha256(data).hexdigest()) == hashes[path], path
    # On disk, every file, folder and link is as it was: modes, times, contents.
    restored = tree_manifest(home)
    assert restored == original, diff_trees(original, restored)


def test_broken_repository_fails_the_spawn_readably_and_a_repaired_one_restores(
    svc: Service, tmp_path: Path
) -> None:
    user = "bob"
    home = svc.homes / user
    make_home(home, small_files=400, big_files=(6 * MiB,), folders=8, seed=2)
    original = tree_manifest(home)
    before = _packs(svc)
    archive(svc, user)
    new = sorted(_packs(svc) - before, key=lambda p: p.stat().st_size)
    assert new, "the archive wrote no pack"
    # Corrupt the biggest of bob's packs (his file data) in the middle; keep a copy.
    saved = tmp_path / "saved-packs"
    saved.mkdir()
    for pack in new:
        shutil.copy2(pack, saved / pack.name)
    victim = new[-1]
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(64 * 1024))

    svc.hub.create_users(user)
    status_code, _ = request_spawn(svc.hub, user)
    assert status_code in (201, 202)
    reader = ProgressReader(svc.hub, user).start()
    assert wait_ready(svc.hub, user) is None, "the spawn succeeded from a corrupted pack"
    events = reader.join()
    print("progress events:", *events, sep="\n  ")
    assert reader.error is None, reader.error
    failed = events[-1]
    assert failed.get("failed") is True, events
    assert "could not be restored" in failed["message"], failed
    assert "quote the reference" in failed["message"], failed
    # Shown as is on the spawn page: one paragraph, not the message template's layout.
    assert "\n" not in failed["message"], repr(failed["message"])

    # The home is still archived: nothing half-written, no staging folder, the notice back.
    left = sorted(os.listdir(home)) if home.exists() else []
    assert left in ([], [NOTICE_NAME]), f"the failed restore left {left} in the home"
    st = status(svc, user)
    assert st["state"] in ("failed", "archived"), st
    assert st["error"], st
    code, job = svc.call("GET", f"/api/homes/{user}/restore", svc.user_token(user))
    assert code == 200, job
    assert job["state"] == "failed", job
    assert job["message"] and "internal error" not in job["message"], job

    # Repaired (the pack put back), the next login restores everything.
    for pack in new:
        shutil.copy2(saved / pack.name, pack)
    status_code, _ = request_spawn(svc.hub, user)
    assert status_code in (201, 202)
    server = wait_ready(svc.hub, user)
    assert server is not None, f"the spawn after the repair failed:\n{service_log(svc)}"
    restored = tree_manifest(home)
    assert restored == original, diff_trees(original, restored)
    assert status(svc, user)["state"] == "active"
