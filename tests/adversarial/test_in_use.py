"""A home some process is using is not moved aside, and writes that reach a quarantine
anyway are never purged.

Before: a process holding a file open (or working inside the home) kept writing into the
quarantined file after the move; the restore from the bucket lacked those writes (13 of
16 appended lines lost) and the quarantine holding them was purged. Now: the archive
refuses while any process holds a file, folder, working folder or mapping in the home
("in use"); a quarantine is compared with its snapshot again right before purging and
kept (and reported) if it differs; and the restore brings such a quarantine back as it
is, fetching from the bucket only what it lacks.
"""

from __future__ import annotations

import gc
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pytest

from adversarial.conftest import Clock, Victim
from hometier.lifecycle import aside, cycle
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home, purge_quarantine
from hometier.lifecycle.restoring import restore_home
from hometier.state import ACTIVE, ARCHIVED, queries
from integration.lifecycle.conftest import manifest

pytestmark = pytest.mark.root


class UserProcess:
    """A process of the home's owner: runs ``body`` and reports it done, then, when
    told (``go()``), runs ``then`` and reports that, then waits to be killed."""

    def __init__(
        self, victim: Victim, body: Callable[[], None], then: Callable[[], None] = lambda: None
    ) -> None:
        self.victim, self.body, self.then = victim, body, then

    def __enter__(self) -> UserProcess:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            gc.disable()  # as in attacker.py: no finaliser of the parent's may run here
            code = 0
            try:
                os.close(up_r)
                os.close(down_w)
                os.chdir(self.victim.home.parent)
                os.setgroups([])
                os.setresgid(self.victim.gid, self.victim.gid, self.victim.gid)
                os.setresuid(self.victim.uid, self.victim.uid, self.victim.uid)
                self.body()
                os.write(up_w, b"1")
                if os.read(down_r, 1) == b"g":
                    self.then()
                    os.write(up_w, b"2")
                time.sleep(3600)
            except BaseException:  # noqa: BLE001 - the child must not return into pytest
                code = 1
            os._exit(code)
        os.close(up_w)
        os.close(down_r)
        self.pid, self.up, self.down = pid, up_r, down_w
        assert os.read(self.up, 1) == b"1", "the user's process did not start"
        return self

    def go(self) -> None:
        os.write(self.down, b"g")
        assert os.read(self.up, 1) == b"2", "the user's process did not finish"

    def __exit__(self, *exc: object) -> None:
        os.close(self.up)
        os.close(self.down)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)


def test_a_file_held_open_keeps_the_home(lc: Lifecycle, victim: Victim) -> None:
    before = manifest(victim.home)
    held: list[object] = []

    def hold() -> None:
        held.append(open(f"{victim.user}/notes.txt", "a"))

    with UserProcess(victim, hold) as proc:
        result = archive_home(lc, victim.user)
        assert result.outcome == "in-use", result
        assert any(f"in use by process {proc.pid}" in d for d in result.details), result.details
        assert queries.get_home(lc.db, victim.user).state == ACTIVE
        assert manifest(victim.home) == before
    assert archive_home(lc, victim.user).outcome == "archived"


@pytest.mark.parametrize("how", ["cwd", "cwd-deep", "mmap", "folder-open"])
def test_a_home_in_use_otherwise_is_kept_too(lc: Lifecycle, victim: Victim, how: str) -> None:
    held: list[object] = []

    def use() -> None:
        if how == "cwd":
            os.chdir(victim.user)
        elif how == "cwd-deep":
            os.chdir(f"{victim.user}/project/data")
        elif how == "mmap":
            f = open(f"{victim.user}/project/analysis.py", "rb")
            held.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
            f.close()
        else:
            held.append(os.open(f"{victim.user}/project", os.O_RDONLY | os.O_DIRECTORY))

    with UserProcess(victim, use):
        result = archive_home(lc, victim.user)
    assert result.outcome == "in-use", result
    assert queries.get_home(lc.db, victim.user).state == ACTIVE


def _blind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process opened its file right after the last look (a race the archive cannot
    close): hide it from the checks before and right after the move."""
    monkeypatch.setattr(cycle, "busy_inodes", lambda dev: {})
    monkeypatch.setattr(aside, "busy_inodes", lambda dev: {})


def test_writes_after_the_move_are_never_purged_and_come_back(
    lc: Lifecycle, victim: Victim, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 lines appended by a process that held the file across the move: all 16 are in
    the home after the restore; the quarantine holding them was not purged."""
    held: list[TextIO] = []

    def open_it() -> None:
        held.append(open(f"{victim.user}/notes.txt", "a", buffering=1))

    def write() -> None:  # after the home was moved aside
        for i in range(16):
            held[0].write(f"appended line {i}\n")
            time.sleep(0.01)
        held[0].close()

    _blind(monkeypatch)
    with UserProcess(victim, open_it, write) as proc:
        assert archive_home(lc, victim.user).outcome == "archived"
        proc.go()
    monkeypatch.undo()
    assert queries.get_home(lc.db, victim.user).state == ARCHIVED

    clock.advance(days=10)  # long past quarantine_for
    errors: list[str] = []
    assert purge_quarantine(lc, errors) == []
    home = queries.get_home(lc.db, victim.user)
    assert home.error and "differs from its snapshot" in home.error, home.error
    assert errors
    assert (
        queries.events(lc.db, victim.user, kind="error")[-1].detail["reason"]
        == "quarantine-differs"
    )

    restored = restore_home(lc, victim.user, "login")

    text = (victim.home / "notes.txt").read_text()
    assert all(f"appended line {i}\n" in text for i in range(16)), "lines lost"
    assert restored.source == "quarantine"
    # The snapshot's own version of the changed file is kept beside it, nothing else.
    boxes = [p for p in victim.home.iterdir() if p.name.startswith("hometier-conflicts-")]
    assert len(boxes) == 1 and sorted(p.name for p in boxes[0].iterdir()) == ["notes.txt"]
    assert "appended" not in (boxes[0] / "notes.txt").read_text()


def test_a_changed_quarantine_fetches_only_what_differs(
    lc: Lifecycle, victim: Victim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 12: one changed file and one deleted file in a 24 MB quarantine: the restore
    downloads those two, not the whole snapshot into a conflicts folder."""
    big = victim.home / "big"
    big.mkdir()
    for i in range(6):
        (big / f"blob{i}").write_bytes(os.urandom(4 * 1024 * 1024))
    os.chown(big, victim.uid, victim.gid)
    before = manifest(victim.home)
    assert archive_home(lc, victim.user).outcome == "archived"
    quarantine = Path(queries.get_home(lc.db, victim.user).quarantine_path or "")
    # Something with the file open across the move wrote to one and deleted another.
    with open(quarantine / "project" / "analysis.py", "a") as f:
        f.write("# edited after the archive\n")
    os.unlink(quarantine / "project" / "data" / "d3.csv")
    got_before = _fetched(lc)

    restore_home(lc, victim.user, "login")

    fetched = _fetched(lc) - got_before
    assert fetched < 2 * 1024 * 1024, f"fetched {fetched} bytes for two small files"
    after = manifest(victim.home)
    assert after["project/data/d3.csv"] == before["project/data/d3.csv"]  # back in its place
    assert "edited after the archive" in (victim.home / "project" / "analysis.py").read_text()
    boxes = [p for p in victim.home.iterdir() if p.name.startswith("hometier-conflicts-")]
    assert len(boxes) == 1
    kept = sorted(str(p.relative_to(boxes[0])) for p in boxes[0].rglob("*") if p.is_file())
    assert kept == ["project/analysis.py"]
    for name in ("big/blob0", "notes.txt", "project/data/d0.csv"):
        assert after[name] == before[name]


def _fetched(lc: Lifecycle) -> int:
    sizes = lc.repo.store.stats.snapshot()["bytes"]
    return sum(v for k, v in sizes.items() if k.startswith("get"))


def test_a_mapping_on_a_filesystem_nothing_else_maps_is_found(tmp_path: Path) -> None:
    """``busy_inodes`` skips the maps of a process that maps nothing of the filesystem
    with one search for the device: a file mapped on a filesystem of its own (a tmpfs,
    as a home volume would be) must still be found, by a child that holds only that."""
    import subprocess
    import sys
    import tempfile

    from hometier.lifecycle.inuse import busy_inodes

    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    with tempfile.NamedTemporaryFile(dir=shm) as f:
        f.write(b"x" * 8192)
        f.flush()
        ino = os.fstat(f.fileno()).st_ino
        code = (
            # libc's mmap, then close: Python's mmap keeps a descriptor of its own, which
            # the descriptor scan would find without the maps.
            "import ctypes,os,sys,time\n"
            "libc=ctypes.CDLL(None,use_errno=True); libc.mmap.restype=ctypes.c_void_p\n"
            "libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,"
            "ctypes.c_int,ctypes.c_long]\n"
            "fd=os.open(sys.argv[1],os.O_RDONLY); p=libc.mmap(None,8192,1,1,fd,0); os.close(fd)\n"
            "assert p not in (None,ctypes.c_void_p(-1).value)\n"
            "print('ready',flush=True); time.sleep(60)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", code, f.name], stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
            found = busy_inodes(os.stat(shm).st_dev)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        assert found.get(ino) == child.pid, found
