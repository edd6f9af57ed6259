"""Restore through forked writer processes (``engine.writers``): the same tree as the
threads make, all or nothing when a writer fails or dies, nothing left running, and no
descriptor of the parent (a service's sockets) kept open in a writer.

The fidelity suites restore small trees, for which ``restore`` forks no writers; here
``processes`` is forced, or the tree is big enough for the automatic choice.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.engine.restore import RestoreError
from hometier.repo import Repository
from hometier.store import open_store
from treeutil import IS_ROOT, assert_same_tree, make_fidelity_tree, snapshot_of_tree

restore_mod = importlib.import_module("hometier.engine.restore")
writers_mod = importlib.import_module("hometier.engine.writers")


def open_repo(url: str) -> Repository:
    repo, _created = Repository.open_or_create(open_store(url))
    return repo


def many_files(root: Path, n: int = 600, size: int = 3000) -> Path:
    """``n`` small files over a few folders, some empty, one of several blobs."""
    for i in range(n):
        d = root / f"pkg{i % 7}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_bytes(b"" if i % 50 == 0 else os.urandom(size) + b"%d" % i)
        os.utime(d / f"m{i}.py", ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_987_654_321 + i))
    (root / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    return root


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every ``Writers`` a restore starts, to look at its processes."""
    made: list[Any] = []
    real = restore_mod.Writers

    def make(*args: Any, **kw: Any) -> Any:
        w = real(*args, **kw)
        made.append(w)
        made.append(list(w.pids))
        return w

    monkeypatch.setattr(restore_mod, "Writers", make)
    yield made


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_fidelity_roundtrip_through_writers(store_url: str, tmp_path: Path, spy: list[Any]) -> None:
    tree = make_fidelity_tree(tmp_path / "home")
    expected = snapshot_of_tree(tree.root)
    repo = open_repo(store_url)
    snap = backup(repo, os.fsdecode(tree.root), user="alice")
    again = Repository.open(open_store(store_url))
    stats = restore(again, again.find_snapshot(snap.id, "alice"), tmp_path / "r", processes=2)
    assert stats.skipped == []
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "r"))
    assert len(spy[1]) == 2 and not any(alive(p) for p in spy[1])


def test_a_home_of_many_files_gets_writers_by_itself(tmp_path: Path, spy: list[Any]) -> None:
    # One file in 50 is empty (created by the plan, not by a writer): enough above the
    # threshold that the files of one blob reach it.
    n = restore_mod.WRITERS_FROM * 51 // 50 + 50
    src = many_files(tmp_path / "home", n=n, size=200)
    expected = snapshot_of_tree(src)
    repo = open_repo(f"memory://{uuid.uuid4().hex}")
    snap = backup(repo, src, user="bob")
    restore(repo, snap, tmp_path / "r")
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "r"))
    assert spy and spy[1], f"a {n}-file restore forks writers"
    # Just below the threshold, or a handful of files: not worth a fork.
    spy.clear()
    fewer = many_files(tmp_path / "fewer", n=restore_mod.WRITERS_FROM - 1, size=200)
    restore(repo, backup(repo, fewer, user="carol"), tmp_path / "r-fewer")
    assert spy == [], "below the threshold: written from the fetch threads"
    assert_same_tree(snapshot_of_tree(fewer), snapshot_of_tree(tmp_path / "r-fewer"))
    small = tmp_path / "small"
    small.mkdir()
    (small / "a").write_bytes(b"x")
    restore(repo, backup(repo, small, user="dave"), tmp_path / "r2")
    assert spy == []


def _fails_in_writer(name: bytes, how: str) -> Any:
    real = restore_mod._set_file_meta

    def finish(fd: int, plan: Any, idx: int, *, as_root: bool) -> list[str]:
        if plan.files[idx][0].endswith(name):
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(5, "Input/output error", "injected")
        return real(fd, plan, idx, as_root=as_root)

    return finish


@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_writer_that_fails_or_dies_fails_the_restore_and_leaves_nothing(
    tmp_path: Path, spy: list[Any], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    src = many_files(tmp_path / "home")
    repo = open_repo(f"memory://{uuid.uuid4().hex}")
    snap = backup(repo, src, user="dave")
    monkeypatch.setattr(restore_mod, "_set_file_meta", _fails_in_writer(b"/m123.py", how))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RestoreError) as err:
        restore(repo, snap, out / "r", processes=2)
    msg = str(err.value)
    assert ("Input/output error" in msg) if how == "raise" else ("signal 9" in msg), msg
    assert os.listdir(out) == []  # no target, no staging folder
    assert not any(alive(p) for p in spy[1])


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_a_full_volume_is_one_clear_error(tmp_path: Path, spy: list[Any]) -> None:
    src = many_files(tmp_path / "home", n=900, size=8000)
    repo = open_repo(f"memory://{uuid.uuid4().hex}")
    snap = backup(repo, src, user="erin")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(RestoreError, match="no space left"):
            restore(repo, snap, mnt / "r", processes=2)
        assert os.listdir(mnt) == []
        assert not any(alive(p) for p in spy[1])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_every_sender_to_a_stopped_writer_gets_its_own_message(tmp_path: Path) -> None:
    """Several fetch threads send to one writer; once it stopped (a full volume), each
    of them sees the broken pipe. The first to ask reads the writer's report, and the
    others, and ``close``, must still give that message rather than a bare "stopped"
    (a CI run once reported "a writer process stopped" for a full volume)."""

    def finish(fd: int, idx: int) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    sfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    files = [(b"f%d" % i, b"") for i in range(4)]
    w = writers_mod.Writers(files, sfd, 1, finish)
    try:
        w.send(0, b"x")
        messages = []
        deadline = time.monotonic() + 30
        while len(messages) < 3 and time.monotonic() < deadline:
            try:
                w.send(1, b"y" * 65536)
            except writers_mod.WriterFailed as exc:
                messages.append(str(exc))
        with pytest.raises(writers_mod.WriterFailed) as closed:
            w.close()
        messages.append(str(closed.value))
    finally:
        w.abort()
        os.close(sfd)
    assert len(messages) == 4, messages
    assert set(messages) == {"no space left on the device holding the home"}, messages


def test_writers_hold_only_their_own_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's listening socket (or any other descriptor) is not kept open by a
    writer: only stdio, the staging folder and the writer's two pipes."""
    src = many_files(tmp_path / "home", n=300)
    repo = open_repo(f"memory://{uuid.uuid4().hex}")
    snap = backup(repo, src, user="frank")
    report = tmp_path / "fds"
    report.mkdir()
    real = restore_mod._set_file_meta

    def finish(fd: int, plan: Any, idx: int, *, as_root: bool) -> list[str]:
        me = report / str(os.getpid())
        if not me.exists():
            links = []
            for n in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{n}"))
                except FileNotFoundError:
                    pass  # listdir's own descriptor, closed since
            me.write_text("\n".join(links))
        return real(fd, plan, idx, as_root=as_root)

    monkeypatch.setattr(restore_mod, "_set_file_meta", finish)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ino = os.fstat(listener.fileno()).st_ino
        restore(repo, snap, tmp_path / "r", processes=2)
    seen = {p.name: p.read_text().splitlines() for p in report.iterdir()}
    seen.pop(str(os.getpid()), None)  # big.bin, of several blobs, is finished here
    assert len(seen) == 2, seen
    for links in seen.values():
        assert f"socket:[{ino}]" not in links
        # stdio, the staging folder, the data pipe, the result pipe, the file being made
        assert len(links) <= 7, links


def test_writers_of_a_killed_restore_stop_and_the_next_restore_cleans_up(tmp_path: Path) -> None:
    """kill -9 of the restoring process: its writers read end-of-file and exit (they
    never outlive it writing into the staging folder); the next restore removes the
    staging folder the crash left."""
    src = many_files(tmp_path / "home", n=2000, size=500)
    url = f"file://{tmp_path / 'repo'}"
    repo = open_repo(url)
    snap = backup(repo, src, user="gina")
    pids = tmp_path / "pids"
    pids.mkdir()
    code = textwrap.dedent(
        f"""
        import importlib, os, sys, time
        from hometier.engine import restore
        from hometier.repo import Repository
        from hometier.store import open_store
        R = importlib.import_module("hometier.engine.restore")
        real = R._set_file_meta
        def slow(fd, plan, idx, *, as_root):
            p = {str(pids)!r} + "/" + str(os.getpid())
            if not os.path.exists(p):
                open(p, "w").close()
            time.sleep(0.01)
            return real(fd, plan, idx, as_root=as_root)
        R._set_file_meta = slow
        repo = Repository.open(open_store({url!r}))
        restore(repo, repo.find_snapshot({snap.id!r}, "gina"), {str(tmp_path / "r")!r}, processes=2)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})

    def writers() -> list[int]:
        # The restoring process finishes big.bin (several blobs) itself: not a writer.
        return [int(p) for p in os.listdir(pids) if int(p) != proc.pid]

    try:
        deadline = time.monotonic() + 60
        while len(writers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(writers()) == 2, "the writers did not start"
    finally:
        proc.kill()
        proc.wait()
    children = writers()
    # Each writer holds up to a MiB of 500-byte files in its pipe, 10 ms apiece here: it
    # must stop before its next file, not drain them (it did: 1.5 s quiet, over 10 s in CI).
    killed = time.monotonic()
    deadline = killed + 1
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(f"writers gone {time.monotonic() - killed:.2f} s after the kill")
    assert not any(alive(p) for p in children), "writers outlived the restore"
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".hometier-restore-")]
    assert len(stale) == 1
    restore(Repository.open(open_store(url)), snap, tmp_path / "r")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hometier-restore-")]
    assert_same_tree(snapshot_of_tree(src), snapshot_of_tree(tmp_path / "r"))


def test_writer_owner_keeps_runs_of_a_folder_together() -> None:
    files = [(b"a/%d" % i, b"") for i in range(600)] + [(b"b/%d" % i, b"") for i in range(10)]
    w = writers_mod.Writers.__new__(writers_mod.Writers)
    w.files, w.pids = files, [1, 2, 3]
    owners = [w.owner(i) for i in range(len(files))]
    assert len(set(owners[: writers_mod.RUN])) == 1
    assert len(set(owners[600:])) == 1
    assert len(set(owners[:600])) > 1  # a big folder is shared out in runs


def test_restores_at_once_share_one_budget_of_writers(
    tmp_path: Path, spy: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four restores of many files at once in one process (the service's pool) fork at
    most the budget's writers between them; those left without write from their threads,
    every home comes back exactly, and the budget is whole again afterwards, failures
    included."""
    import threading

    budget = writers_mod.Budget(3)
    monkeypatch.setattr(writers_mod, "BUDGET", budget)
    monkeypatch.setattr(restore_mod, "_writer_count", lambda asked, files: 2)
    running: list[int] = []
    peak = [0]
    real = restore_mod.Writers

    def counting(*args: Any, **kw: Any) -> Any:
        w = real(*args, **kw)
        n = len(w.pids)
        running.append(n)
        peak[0] = max(peak[0], sum(running))
        close, counted = w.close, [True]

        def closed() -> Any:
            try:
                return close()
            finally:
                if counted and counted.pop():
                    running.remove(n)

        w.close = closed
        return w

    monkeypatch.setattr(restore_mod, "Writers", counting)
    src = many_files(tmp_path / "home", n=400)
    expected = snapshot_of_tree(src)
    repo = open_repo(f"memory://{uuid.uuid4().hex}")
    snap = backup(repo, src, user="bob")
    gate = threading.Barrier(4)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        gate.wait()
        try:
            restore(repo, snap, tmp_path / f"r{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i in range(4):
        assert_same_tree(expected, snapshot_of_tree(tmp_path / f"r{i}"))
    print(f"writers at once: at most {peak[0]} of a budget of 3")
    assert 1 <= peak[0] <= 3
    assert budget.free == 3
    # A restore that fails gives its writers back too.
    monkeypatch.setattr(restore_mod, "_set_file_meta", _fails_in_writer(b"m7.py", "raise"))
    with pytest.raises(RestoreError):
        restore(repo, snap, tmp_path / "bad")
    assert budget.free == 3
    # The caller's explicit count is not the budget's to cut.
    assert restore_mod._writer_count(2, 10_000) == 2
