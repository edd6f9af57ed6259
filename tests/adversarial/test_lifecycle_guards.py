"""Guards of the archive cycle, each reproduced as it was found.

4. A same-size in-place rewrite of a top-level file (or of a hard-linked file deeper)
   whose mtime was put back, between the last comparison and the move, was accepted:
   ctime was not compared for top-level entries and files with several links.
11. A filesystem mounted inside a home: the state was committed as archived, then the
    move failed (EBUSY), the home was left half moved with no notice, and ``recover``
    failed every cycle.
13. A zombie counted as alive (its claims held for 5 minutes); the quarantine folder was
    0755 (anyone listed user names and snapshot ids).
14. Without a reachable Hub the archiver decided by file times alone and would archive a
    home whose server runs.
15. Folders that are not homes (``lost+found``, dot-folders, the quarantine, mount
    points, names JupyterHub would never give) were candidates.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversarial.conftest import Clock, Victim, fill_home
from hometier import faults
from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import NotEligible, archive_home, recover
from hometier.lifecycle.homes import QUARANTINE_DIR
from hometier.lifecycle.loop import discover_homes, run_cycle
from hometier.lifecycle.recovery import _dead_here
from hometier.state import ACTIVE, queries
from integration.lifecycle.conftest import manifest

pytestmark = pytest.mark.root


def _at(monkeypatch: pytest.MonkeyPatch, point: str, action: object) -> list[str]:
    """Run ``action()`` when the archive reaches the named step."""
    real = faults.point
    fired: list[str] = []

    def hook(name: str) -> None:
        if name == point and not fired:
            fired.append(name)
            action()  # type: ignore[operator]
        real(name)

    monkeypatch.setattr(faults, "point", hook)
    return fired


@pytest.mark.parametrize("where", ["top-level", "hard-linked"])
def test_a_rewrite_with_its_mtime_put_back_is_caught(
    lc: Lifecycle, victim: Victim, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "hard-linked":
        os.link(victim.home / "project" / "data" / "d1.csv", victim.home / "project" / "d1-link")
        target = victim.home / "project" / "data" / "d1.csv"
    else:
        target = victim.home / "notes.txt"
    size = target.stat().st_size
    old = target.stat()

    def rewrite() -> None:
        with open(target, "r+b") as f:
            f.write(b"Z" * size)  # same size, new bytes
        os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))  # mtime put back

    fired = _at(monkeypatch, "after_state_change", rewrite)
    result = archive_home(lc, victim.user)

    assert fired
    assert result.outcome == "changed", result
    assert queries.get_home(lc.db, victim.user).state == ACTIVE
    assert target.read_bytes() == b"Z" * size  # the new content is in the home


@pytest.fixture
def mounted_inside(victim: Victim) -> Iterator[Path]:
    point = victim.home / "scratch"
    point.mkdir()
    os.chown(point, victim.uid, victim.gid)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    (point / "on-the-other-fs").write_text("x\n")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_home_with_a_mount_inside_is_skipped_before_any_state_change(
    lc: Lifecycle, victim: Victim, mounted_inside: Path
) -> None:
    before = manifest(victim.home)
    result = archive_home(lc, victim.user)
    assert result.outcome == "skipped" and "mounted at" in result.reason, result
    assert queries.get_home(lc.db, victim.user).state == ACTIVE
    assert manifest(victim.home) == before
    assert recover(lc) == []
    report = run_cycle(lc)
    assert report.errors == [] or all("recovery" not in e for e in report.errors)


def test_a_zombie_worker_is_dead() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(500):  # wait until it has exited (and is a zombie, not reaped)
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        else:
            raise AssertionError("the child never became a zombie")
        assert _dead_here(f"archiver:{socket.gethostname()}:{pid}")
        assert not _dead_here(f"archiver:{socket.gethostname()}:{os.getppid()}")
    finally:
        os.waitpid(pid, 0)


def test_the_quarantine_is_private(lc: Lifecycle, victim: Victim) -> None:
    root = lc.layout.root / QUARANTINE_DIR
    root.mkdir(mode=0o755)  # as an older version left it
    os.chmod(root, 0o755)
    assert archive_home(lc, victim.user).outcome == "archived"
    st = os.stat(root)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    # Another user cannot list the names in it.
    pid = os.fork()
    if pid == 0:
        os.setresuid(victim.uid + 1, victim.uid + 1, victim.uid + 1)
        try:
            os.listdir(root)
            os._exit(1)
        except PermissionError:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


def test_without_a_hub_nothing_is_archived_unless_configured_so(
    lc: Lifecycle, victim: Victim, clock: Clock
) -> None:
    clock.advance(days=400)
    lc.use_hub = True  # the default: a JupyterHub deployment
    report = run_cycle(lc)
    assert report.skipped and "archiving nothing" in report.skipped
    assert report.results == []
    with pytest.raises(NotEligible, match="JupyterHub"):
        archive_home(lc, victim.user)
    # A Hub that does not answer: the same.
    lc.hub = HubClient("http://127.0.0.1:9/hub/api", "token", timeout=1)
    report = run_cycle(lc)
    assert report.skipped and report.results == []
    assert queries.get_home(lc.db, victim.user).state == ACTIVE
    # Said explicitly: a deployment without JupyterHub.
    lc.hub, lc.use_hub = None, False
    report = run_cycle(lc)
    assert [r.outcome for r in report.results] == ["archived"]


def test_folders_that_are_not_homes_are_never_candidates(
    lc: Lifecycle, victim: Victim, tmp_path: Path
) -> None:
    root = lc.layout.root
    for name in ("lost+found", ".snapshot", "Alice", "with space", "tab\tname"):
        fill_home(root / name, victim.uid, victim.gid)
    (root / QUARANTINE_DIR).mkdir(mode=0o700)
    mnt = root / "mounted"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        found = discover_homes(lc)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert found == [victim.user]
    assert queries.home_users(lc.db) == {victim.user}


def test_the_plan_scan_never_opens_through_a_symlinked_folder(
    victim: Victim, canary: object, tmp_path: Path
) -> None:
    """``hometier plan`` reads homes as root (sizes, sampled contents): a folder the user
    swapped for a symlink is never gone through, wherever it sits on the path."""
    from hometier.lifecycle import plan

    outside = tmp_path / "outside" / "b"
    outside.mkdir(parents=True)
    (outside / "f").write_text("root's\n")
    os.symlink(tmp_path / "outside", victim.home / "a")
    with pytest.raises(OSError):
        plan._open_dir(str(victim.home), "a/b")
    with pytest.raises(OSError):
        plan._open_in(str(victim.home), "a/b/f", os.O_RDONLY | os.O_NOFOLLOW)
    assert plan.read_blobs((str(victim.home), "a/b/f"), 7, 0, 7, plan.Chunking()) is None


def test_a_prune_mark_is_dated_when_it_becomes_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 13: a mark carried the prune's start time but was written at its end, so an
    archive that began in between (it loaded the index before the mark existed) looked
    younger than the mark and did not hold the sweep back."""
    import datetime as dt
    import itertools

    from hometier.engine import backup
    from hometier.engine import prune as prune_mod
    from hometier.repo import Repository
    from hometier.repo.repository import PRUNE_PREFIX
    from hometier.store import open_store

    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    snap = backup(repo, src, user="alice")
    for obj in list(repo.store.list("snapshots/")):  # nothing references its packs now
        repo.store.delete(obj.key)
    del snap
    ticks = itertools.count(0, 300)  # each look at the clock: five more minutes passed
    monkeypatch.setattr(prune_mod.time, "monotonic", lambda: float(next(ticks)))
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    prune_mod.prune(repo, now=t0, grace=dt.timedelta(hours=1))

    [mark] = list(repo.store.list(PRUNE_PREFIX))
    written = dt.datetime.fromisoformat(__import__("json").loads(repo.store.get(mark.key))["time"])
    assert written > t0, "the mark carries the time the prune began"
    # An archive that began after the prune did, but before the mark was there:
    began = t0 + (written - t0) / 2
    report = prune_mod.prune(
        Repository.open(repo.store), now=t0 + dt.timedelta(hours=3), archives_since=began
    )
    assert report.packs_deleted == 0 and report.marks_waiting == 1, report
