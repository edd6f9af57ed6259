"""A restore into a home its user can write to (``hometier restore`` into an existing
folder) stages inside that home: a root-owned 0700 folder the user cannot enter but can
rename, or exchange with a symlink. Here the user does so in a tight loop while restores
with writer processes run, and each restore must end one of two ways: done, with every
file as archived; or failed, with the home as it was (nothing of the snapshot in it, no
staging folder left under any name). Root's canary never changes.
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import struct
import time
import uuid
from pathlib import Path

import pytest

from adversarial.attacker import Attacker, Canary, exchange, report
from adversarial.conftest import Victim, chown_tree
from hometier.engine import backup, restore
from hometier.engine.restore import STAGING_PREFIX, RestoreError
from hometier.repo import Repository
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree

pytestmark = pytest.mark.root


def _source(root: Path, uid: int) -> Path:
    for i in range(400):
        d = root / f"pkg{i % 5}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_bytes(os.urandom(200) + b"%d" % i)
    (root / "notes.txt").write_bytes(b"notes\n" * 100)
    chown_tree(root, uid, uid)
    return root


def _empty(home: Path, keep: str) -> None:
    for entry in os.listdir(home):
        full = home / entry
        if entry == keep:
            continue
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        else:
            full.unlink()


def test_a_staging_folder_exchanged_with_a_symlink_redirects_nothing(
    tmp_path: Path, victim: Victim, canary: Canary
) -> None:
    src = _source(tmp_path / "src", victim.uid)
    repo, _ = Repository.open_or_create(open_store(f"memory://{uuid.uuid4().hex}"))
    snap = backup(repo, src, user=victim.user)
    expected = snapshot_of_tree(src, include_root=False)
    home = victim.home
    _empty(home, keep="")
    os.symlink(str(canary.path), home / "evil")
    os.lchown(home / "evil", victim.uid, victim.gid)
    prefix = STAGING_PREFIX.encode()
    # [0:8] exchanges that landed, counted by the attacker; [8:16] 1 while a restore runs
    swaps = mmap.mmap(-1, 16)

    def swapped() -> int:
        return int(struct.unpack_from("<Q", swaps, 0)[0])

    def attack() -> None:
        if not struct.unpack_from("<Q", swaps, 8)[0]:
            return
        for name in os.listdir(b"."):
            if name.startswith(prefix) and exchange(name, b"evil"):
                struct.pack_into("<Q", swaps, 0, swapped() + 1)
                exchange(name, b"evil")

    def symlink_back() -> None:
        """The attacker's symlink is the one entry of the home not from the snapshot; it
        may be left under a staging folder's name (the user exchanged them): back to
        ``evil`` for the next round."""
        extra = [n for n in os.listdir(home) if n not in top and not staging_left(n)]
        assert len(extra) == 1 and os.readlink(home / extra[0]) == str(canary.path), [
            (n, os.lstat(home / n)) for n in extra
        ]
        if extra[0] != "evil":
            os.rename(home / extra[0], home / "evil")

    def staging_left(name: str) -> bool:
        """A staging folder whose making the user foiled (exchanged between ``mkdir``
        and ``open``): empty, root's, 0700, and removed by the next restore."""
        if not name.startswith(STAGING_PREFIX):
            return False
        st = os.lstat(home / name)
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700):
            return False
        assert not os.listdir(home / name)
        foiled.add(name)
        return True

    def quiet(a: Attacker) -> None:
        """Stop the attacker's swaps (its loop ends the one under way) to look."""
        struct.pack_into("<Q", swaps, 8, 0)
        m = a.mark()
        while a.iterations < m + 2:
            time.sleep(0.001)

    foiled: set[str] = set()
    top = set(os.listdir(src))
    rounds, landed, done, failed = 24, 0, 0, 0
    with Attacker(victim.uid, victim.gid, home, attack) as a:
        for _ in range(rounds):
            before = swapped()
            struct.pack_into("<Q", swaps, 8, 1)
            try:
                restore(repo, snap, home, merge=True, processes=2)
            except RestoreError:
                quiet(a)
                failed += 1
                # Nothing of the snapshot in the home, no staging folder by any name.
                assert not set(os.listdir(home)) & top, os.listdir(home)
                symlink_back()
            else:
                quiet(a)
                done += 1
                symlink_back()
                got = snapshot_of_tree(home, include_root=False)
                got.pop(b"evil")
                for name in [k for k in got if isinstance(k, bytes) and b"/" not in k]:
                    if staging_left(os.fsdecode(name)):
                        got.pop(name)
                assert_same_tree(expected, got)
            landed += swapped() > before
            assert canary.changes() == [], canary.changes()
            _empty(home, keep="evil")
    print(
        report(
            f"restore staged in a home whose user exchanges the staging folder with a "
            f"symlink ({done} done, {failed} failed, {len(foiled)} staging folders left empty for the next restore)",
            rounds,
            landed,
            a,
        )
    )
    restore(repo, snap, home, merge=True)  # no attacker now: removes what was foiled
    assert not [n for n in os.listdir(home) if n.startswith(STAGING_PREFIX)]
    assert canary.changes() == []
    assert landed, "the attacker never swapped a staging folder: the test proved nothing"
