"""Per-user volumes, end to end: the init container's ``hometier fetch-home --unpack-into``
against a real ``hometier serve`` registered with a real JupyterHub.

The init container holds nothing but the one-spawn restore token (scope
``custom:hometier:restore!user=U``, what ``tokens.mint_restore_token`` mints): no store
credentials, no database. With it, it streams the latest snapshot of U's home and
unpacks it into the (empty) volume, identical to the original: modes, owners,
nanosecond times, symlinks, hardlinks, xattrs, sparse files, special files. A volume that
already holds files is left alone; another user's token is refused; a repository that
cannot deliver the whole home must fail the init container, not start the server on a
partial or empty home; and downloads that stall must not hold up other users' logins.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest_service import archive, make_home, start_service
from fixtures.service import Service
from hometier.lifecycle.activity import NOTICE_NAME
from treeutil import (
    MiB,
    allocated,
    assert_same_tree,
    make_fidelity_tree,
    set_times,
    snapshot_of_tree,
)

pytestmark = [pytest.mark.hub, pytest.mark.slow]

VERA = "vera"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("volume"))
    try:
        service.hub.create_users(VERA, "walt", "xena")
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def vera(svc: Service) -> dict[Any, Any]:
    """Vera's home: one of everything hometier keeps; archived, quarantine purged.
    Returns the description of the original tree.

    The hardlink group's top-level name moves into a folder first: archiving a home
    with a top-level hardlink fails (see ``test_a_top_level_hardlink_does_not_block_archiving``).
    """
    home = svc.homes / VERA
    make_fidelity_tree(home, big_size=3 * MiB, sparse_size=24 * MiB)
    os.rename(home / "hardlink-1", home / "a" / "b" / "c" / "hardlink-1")
    set_times(os.fsencode(home), seed=5)
    original = snapshot_of_tree(home)
    archive(svc, VERA)
    return original


def restore_token(svc: Service, user: str, owner: str | None = None) -> str:
    """What the spawn hook mints: a token of ``owner`` (default ``user``) that can only
    restore ``user``'s home."""
    return svc.user_token(owner or user, [f"custom:hometier:restore!user={user}"], expires_in=600)


def fetch_home(
    svc: Service, user: str, target: Path, token: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``hometier fetch-home --unpack-into TARGET`` as an init container runs it: its
    environment holds the token and nothing of the store or the database."""
    env = {"PATH": os.environ["PATH"], "HOME": str(target.parent), "HOMETIER_RESTORE_TOKEN": token}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hometier.cli.main",
            "fetch-home",
            "--user",
            user,
            "--service-url",
            svc.url,
            "--unpack-into",
            str(target),
        ],
        env=env,
        cwd=target.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _packs(svc: Service) -> set[Path]:
    return {p for p in (svc.root / "repo" / "packs").rglob("*") if p.is_file()}


def test_restore_token_unpacks_the_home_identical(
    svc: Service, vera: dict[Any, Any], tmp_path: Path
) -> None:
    target = tmp_path / "volume"
    target.mkdir()
    done = fetch_home(svc, VERA, target, restore_token(svc, VERA))
    assert done.returncode == 0, done.stderr
    assert "unpacked" in done.stderr, done.stderr
    assert_same_tree(vera, snapshot_of_tree(target))
    # Sparse files came back sparse.
    assert allocated(target / "sparse") < 4 * MiB
    assert allocated(target / "hole-only") < MiB


def test_an_absent_volume_folder_is_created(
    svc: Service, vera: dict[Any, Any], tmp_path: Path
) -> None:
    target = tmp_path / "new-volume"
    done = fetch_home(svc, VERA, target, restore_token(svc, VERA))
    assert done.returncode == 0, done.stderr
    assert_same_tree(vera, snapshot_of_tree(target))


def test_a_volume_holding_only_the_notice_is_restored(
    svc: Service, vera: dict[Any, Any], tmp_path: Path
) -> None:
    target = tmp_path / "volume"
    target.mkdir()
    (target / NOTICE_NAME).write_text("Your files are archived\n")
    os.utime(target, ns=(vera[b""]["mtime_ns"], vera[b""]["mtime_ns"]))
    done = fetch_home(svc, VERA, target, restore_token(svc, VERA))
    assert done.returncode == 0, done.stderr
    assert_same_tree(vera, snapshot_of_tree(target))


def test_a_fresh_ext4_volume_with_lost_found_is_restored(
    svc: Service, vera: dict[Any, Any], tmp_path: Path
) -> None:
    """A new PVC formatted ext4 holds ``lost+found`` at its root: ``fetch-home`` counts it
    as empty, so the unpack must accept it too (and keep it)."""
    target = tmp_path / "volume"
    (target / "lost+found").mkdir(parents=True)
    done = fetch_home(svc, VERA, target, restore_token(svc, VERA))
    assert done.returncode == 0, done.stderr
    assert (target / "lost+found").is_dir()
    shutil.rmtree(target / "lost+found")
    got = snapshot_of_tree(target)
    got.pop(b"")  # removing lost+found moved the root's mtime
    want = dict(vera)
    want.pop(b"")
    assert_same_tree(want, got)


def test_a_volume_that_holds_files_is_left_alone(
    svc: Service, vera: dict[Any, Any], tmp_path: Path
) -> None:
    target = tmp_path / "volume"
    target.mkdir()
    (target / "new-work.ipynb").write_text("{}")
    before = snapshot_of_tree(target)
    done = fetch_home(svc, VERA, target, restore_token(svc, VERA))
    assert done.returncode == 0, done.stderr
    assert "already holds files" in " ".join(done.stderr.split()), done.stderr
    assert snapshot_of_tree(target) == before


@pytest.mark.parametrize("scopes", ["restore-only", "all"])
def test_another_users_token_is_refused(
    svc: Service, vera: dict[Any, Any], tmp_path: Path, scopes: str
) -> None:
    token = (
        restore_token(svc, "xena")  # xena's one-spawn token, aimed at vera's home
        if scopes == "restore-only"
        else svc.user_token("xena")  # every scope xena holds
    )
    target = tmp_path / "volume"
    target.mkdir()
    done = fetch_home(svc, VERA, target, token)
    assert done.returncode != 0, done.stderr
    assert "may not" in done.stderr or "403" in done.stderr, done.stderr
    assert os.listdir(target) == []


def test_a_top_level_hardlink_does_not_block_archiving(svc: Service) -> None:
    """Not the stream, but found here: moving a home's top-level entries into the
    quarantine renames a top-level file, which changes the ctime of its inode, so every
    other name of that inode deeper in the home then looks "changed" to the comparison
    after the move, and the archive is undone, every cycle."""
    home = svc.homes / "yann"
    make_home(home, small_files=20, folders=2, seed=4)
    os.link(home / "notes.md", home / "project-00" / "notes-hardlink.md")
    set_times(os.fsencode(home), seed=4)
    done = svc.cli("--json", "archive", "yann", check=False)
    assert '"outcome": "archived"' in done.stdout, done.stdout + done.stderr


def test_the_restore_token_gets_the_whole_latest_home_and_nothing_else(
    svc: Service, vera: dict[Any, Any]
) -> None:
    token = restore_token(svc, VERA)
    base = f"/api/homes/{VERA}/snapshots"
    code, body = svc.call("GET", f"{base}/latest/archive?format=tar", token, raw=True)
    assert code == 200, body[:300]
    code, doc = svc.call("GET", base, token)
    assert code == 403, doc
    snap = svc.call("GET", base, svc.user_token(VERA))[1]["snapshots"][0]["id"]
    for path in (
        f"{base}/latest/archive?format=zip",
        f"{base}/latest/archive?format=tar&path=a",
        f"{base}/{snap}/archive?format=tar",
        f"{base}/latest/file?path=small.txt",
        f"{base}/latest/tree",
    ):
        code, doc = svc.call("GET", path, token)
        assert code == 403, (path, doc)
    code, doc = svc.call("POST", f"/api/homes/{VERA}/leases", token, {"duration": "1h"})
    assert code == 403, doc


def test_no_token_is_a_usage_error(svc: Service, tmp_path: Path) -> None:
    target = tmp_path / "volume"
    target.mkdir()
    done = fetch_home(svc, VERA, target, "")
    assert done.returncode == 2, done.stderr
    assert "HOMETIER_RESTORE_TOKEN" in done.stderr
    assert os.listdir(target) == []


def test_a_repository_that_cannot_deliver_fails_the_init_container(
    svc: Service, tmp_path: Path
) -> None:
    """Walt's packs are gone (a lost bucket prefix, a bad lifecycle rule): the init
    container must fail, so that his server does not start on an empty home."""
    user = "walt"
    make_home(svc.homes / user, small_files=300, big_files=(2 * MiB,), folders=8, seed=3)
    original = snapshot_of_tree(svc.homes / user)
    before = _packs(svc)
    archive(svc, user)
    packs = sorted(_packs(svc) - before)
    assert packs
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in packs:
        shutil.move(p, aside / p.name)
    target = tmp_path / "volume"
    target.mkdir()
    try:
        done = fetch_home(svc, user, target, restore_token(svc, user))
        print(done.stderr)
        assert os.listdir(target) == [], "a failed unpack left files in the volume"
        assert done.returncode != 0, (
            "fetch-home succeeded without the packs; the server would start on an empty "
            f"home:\n{done.stderr}"
        )
    finally:
        for p in packs:
            shutil.move(aside / p.name, p)
    shutil.rmtree(target)
    done = fetch_home(svc, user, target, restore_token(svc, user))
    assert done.returncode == 0, done.stderr
    assert_same_tree(original, snapshot_of_tree(target))


def _stalled_download(
    svc: Service, user: str, token: str
) -> tuple[http.client.HTTPConnection, int | None]:
    """Start downloading ``user``'s home as a tar and read nothing of the body; the
    status, or None if the headers did not come within 3 s."""
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=3)
    try:
        conn.request(
            "GET",
            f"/services/hometier/api/homes/{user}/snapshots/latest/archive?format=tar",
            headers={"Authorization": f"token {token}"},
        )
        return conn, conn.getresponse().status
    except TimeoutError:
        return conn, None


def test_stalled_downloads_do_not_hold_up_other_logins(svc: Service, vera: dict[Any, Any]) -> None:
    """Init containers (or a user's browser) that stop reading a download must not take
    every worker of the service: another user's restore request still answers."""
    token = restore_token(svc, VERA)
    other = svc.user_token("xena")
    stalled: list[http.client.HTTPConnection] = []
    try:
        answered = 0
        for _ in range(20):
            conn, status = _stalled_download(svc, VERA, token)
            stalled.append(conn)
            if status is None:
                break
            assert status == 200, status
            answered += 1
        time.sleep(1)  # the producers fill the socket buffers and block
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=6)
        began = time.monotonic()
        try:
            conn.request(
                "GET",
                "/services/hometier/api/homes/xena/restore",
                headers={"Authorization": f"token {other}"},
            )
            poll: int | None = conn.getresponse().status
        except TimeoutError:
            poll = None
        finally:
            conn.close()
        waited = time.monotonic() - began
        assert poll == 200, (
            f"with {answered} downloads stalled (download {answered + 1} got no headers "
            f"either: {len(stalled) > answered}), another user's restore poll got no "
            f"answer in {waited:.0f} s"
        )
    finally:
        for c in stalled:
            c.close()
