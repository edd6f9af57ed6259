"""A backup reads a home its user can change while it runs. Here the user exchanges a
file with a named pipe (``mkfifo``) in a tight loop, in both places a backup opens
files: a folder of a few small files (read by the walking thread) and a folder of many
files (one reader thread per file). Opening a pipe to read waits for a writer that never
comes: a backup that did so would hang the archiver for good. Each backup must end,
every file the user did not touch must be in it exactly, and a swapped name is either
the file, the pipe, or listed as changed.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from pathlib import Path

import pytest

from adversarial.attacker import Attacker, exchange, report
from adversarial.conftest import Victim, chown_tree
from hometier.engine import backup, restore
from hometier.repo import Repository
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree

pytestmark = pytest.mark.root

FOLDERS = {"few": 3, "many": 80}
"""Folder name → files in it, one folder for each way a backup reads a file."""
ROUNDS = 20
DEADLINE = 60.0
"""Seconds a backup of this small home may take under a loaded machine before it is
called hung (it takes well under one)."""


def _home(home: Path, uid: int) -> None:
    for folder, n in FOLDERS.items():
        d = home / folder
        d.mkdir()
        for i in range(n):
            (d / f"f{i:03d}.txt").write_bytes(b"%s %d\n" % (folder.encode(), i) * 700)
        (d / "victim").write_bytes(b"the user's file\n" * 500)
        os.mkfifo(d / "pipe")
    chown_tree(home, uid, uid)


def test_a_file_exchanged_with_a_named_pipe_never_hangs_a_backup(
    tmp_path: Path, victim: Victim
) -> None:
    home = victim.home
    for entry in os.listdir(home):  # the fixture's files are not part of this test
        full = home / entry
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        else:
            full.unlink()
    _home(home, victim.uid)
    untouched = snapshot_of_tree(home, include_root=False)
    for folder in FOLDERS:  # the swaps change the folders' times, and these two
        for key in (folder, f"{folder}/victim", f"{folder}/pipe"):
            untouched.pop(key.encode())
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))

    def attack() -> None:
        for folder in FOLDERS:
            exchange(f"{folder}/victim", f"{folder}/pipe")

    def unblock() -> None:
        """A backup stuck opening a pipe: open each for writing so that it returns."""
        for folder in FOLDERS:
            for name in ("victim", "pipe"):
                try:
                    fd = os.open(home / folder / name, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                os.close(fd)

    landed = changed = 0
    with Attacker(victim.uid, victim.gid, home, attack) as a:
        for r in range(ROUNDS):
            m = a.mark()
            out: dict[str, object] = {}

            def run(out: dict[str, object] = out) -> None:
                try:
                    out["snap"] = backup(repo, home, user=victim.user)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    out["error"] = exc

            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(DEADLINE)
            hung = t.is_alive()
            if hung:
                unblock()
                t.join(10)
            assert not hung, f"round {r}: the backup hung on a swapped-in pipe"
            assert "error" not in out, out["error"]
            landed += a.landed(m)
            snap = out["snap"]
            changed += sum(1 for note in snap.stats.changed if "victim" in note or "pipe" in note)
            got_dir = tmp_path / f"got{r}"
            restore(repo, snap, got_dir)
            got = snapshot_of_tree(got_dir, include_root=False)
            for folder in FOLDERS:
                got.pop(folder.encode())
                for name in ("victim", "pipe"):
                    rel = f"{folder}/{name}".encode()
                    if got.pop(rel, None) is None:
                        continue  # listed as changed: not in the snapshot
                    st = os.lstat(got_dir / folder / name)
                    if stat.S_ISREG(st.st_mode):
                        body = (got_dir / folder / name).read_bytes()
                        assert body == b"the user's file\n" * 500, rel
                    else:
                        assert stat.S_ISFIFO(st.st_mode), (rel, st)
            assert_same_tree(untouched, got)
    print(
        report(
            f"a file exchanged with a named pipe during backups ({changed} listed as changed)",
            ROUNDS,
            landed,
            a,
        )
    )
