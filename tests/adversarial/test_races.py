"""A user with a shell races root: every attack of THREATS.md, run for real.

The attacker is a forked child running as the home's owner (``Attacker``): it swaps
names in a tight loop — symlinks planted where hometier writes, ``RENAME_EXCHANGE`` of a
folder hometier is using with a symlink into a root-owned canary folder — while root
archives, restores and deletes, many times over. Each test asserts the canary is
byte-for-byte, mode-for-mode unchanged and prints how often the swap was in flight.

Items (from the trust review): 5 the archive notice written through a symlink planted
at its temporary name; 6 the failed-restore notice written through a dangling symlink,
and a notice turned symlink blocking every later restore; 7 the conflicts folder used as
a path component by root (renames into, and chown of, root's files); 8 tree removal
unlinking through swapped intermediate folders.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from adversarial.attacker import Attacker, Canary, exchange, report
from adversarial.conftest import Victim, chown_tree
from hometier.engine.fsutil import remove_tree
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import RestoreFailed, restore_home
from hometier.state import ACTIVE, queries
from integration.lifecycle.conftest import manifest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROUNDS = int(os.environ.get("HOMETIER_RACE_ROUNDS", "25"))
"""Archive/restore rounds per race (``HOMETIER_RACE_ROUNDS`` for a longer run)."""
TMP_NOTICE = f".{NOTICE_NAME}.tmp"


def _cycle(lc: Lifecycle, user: str) -> bool:
    """One archive then one restore of the home, as the lifecycle runs them; True if
    the home was archived."""
    result = archive_home(lc, user)
    assert result.outcome in ("archived", "changed", "in-use"), result
    if queries.get_home(lc.db, user).state != ACTIVE:
        restore_home(lc, user, "login")
    return result.outcome == "archived"


def test_notice_is_never_written_through_a_planted_symlink(
    lc: Lifecycle, victim: Victim, canary: Canary
) -> None:
    """Item 5: whenever the home looks emptied, the user plants symlinks to root's
    secret at the notice's temporary name and at the notice itself."""
    secret = str(canary.path / "secret")
    user = victim.user

    def attack() -> None:
        # Only lstat and symlink: a process holding a file of the home open would make
        # the archive refuse ("in use") instead of racing it.
        if not os.path.lexists(f"{user}/notes.txt"):  # the home was emptied
            for name in (TMP_NOTICE, NOTICE_NAME):
                try:
                    os.symlink(secret, f"{user}/{name}")
                except FileExistsError:
                    pass

    landed = archived = 0
    with Attacker(victim.uid, victim.gid, lc.layout.root, attack) as a:
        for _ in range(ROUNDS):
            m = a.mark()
            archived += _cycle(lc, user)
            landed += a.landed(m)
            # The user's planted links are theirs to keep; clean them so archives go on.
            for name in (TMP_NOTICE, NOTICE_NAME):
                p = victim.home / name
                if p.is_symlink():
                    p.unlink()
    print(report(f"notice through a planted symlink (5; {archived} archived)", ROUNDS, landed, a))
    assert canary.changes() == []
    assert archived >= ROUNDS // 2


def test_failed_restore_notice_never_follows_a_symlink_and_never_blocks_logins(
    lc: Lifecycle, victim: Victim, canary: Canary, tmp_path: Path
) -> None:
    """Item 6: the stand-in's notice replaced by a dangling symlink into root's folder;
    the restore fails (the bucket is unreachable); root must not create that file, and
    once the bucket is back the user logs in (the symlink, theirs, is kept)."""
    before = manifest(victim.home)
    assert archive_home(lc, victim.user).outcome == "archived"
    lc.restore_from_quarantine = False  # the bucket is the only source
    notice = victim.home / NOTICE_NAME
    notice.unlink()
    os.symlink(canary.path / "planted-by-user", notice)
    os.lchown(notice, victim.uid, victim.gid)
    data = Path(lc.repo.store.url.removeprefix("file://")) / "packs"
    hidden = tmp_path / "packs-away"
    data.rename(hidden)  # the bucket loses its data
    try:
        with pytest.raises(RestoreFailed):
            restore_home(lc, victim.user, "login")
    finally:
        hidden.rename(data)
    assert canary.changes() == []
    assert notice.is_symlink()

    result = restore_home(lc, victim.user, "login")  # the next login works

    assert result.outcome == "restored"
    assert notice.is_symlink()  # the user's own entry, kept
    got = manifest(victim.home)
    got.pop(NOTICE_NAME)
    assert got == before
    assert canary.changes() == []


def test_conflicts_folder_swapped_for_a_symlink_redirects_nothing(
    lc: Lifecycle, victim: Victim, canary: Canary
) -> None:
    """Item 7: names the user recreated while archived collide at restore, so a
    conflicts folder is made; the user exchanges it with a symlink to root's folder in a
    loop. Root must never rename into, nor chown, anything there."""
    user = victim.user
    link = f"{user}/evil"

    def setup() -> None:
        try:
            os.symlink(str(canary.path), link)
        except FileExistsError:
            pass

    seen: list[str] = []

    def attack() -> None:
        # The conflicts folder's name comes from the snapshot id the notice shows; no
        # listing of the home (an open folder would make the archive refuse).
        try:
            with open(f"{user}/{NOTICE_NAME}") as f:
                text = f.read()
            seen[:] = [text.rsplit("Snapshot ", 1)[1][:12]]
        except (OSError, IndexError):
            pass
        if seen:
            exchange(f"{user}/hometier-conflicts-{seen[0]}", link)

    landed = 0
    rounds = 0
    with Attacker(victim.uid, victim.gid, lc.layout.root, attack, setup=setup) as a:
        for _ in range(ROUNDS):
            _clean(victim.home, ("hometier-conflicts-", "evil"))
            result = archive_home(lc, user)
            if result.outcome != "archived":
                continue
            # While archived, the user makes new files under the archived names.
            for name in ("notes.txt", "project", "extra"):
                p = victim.home / name
                p.write_text("made while archived\n")
                os.lchown(p, victim.uid, victim.gid)
            os.symlink(str(canary.path), victim.home / "evil")
            os.lchown(victim.home / "evil", victim.uid, victim.gid)
            m = a.mark()
            restored = restore_home(lc, user, "login")
            rounds += 1
            landed += a.landed(m)
            assert set(restored.conflicts) >= {"notes.txt", "project"}
            assert canary.changes() == [], canary.changes()
    print(report("conflicts folder exchanged with a symlink (7)", rounds, landed, a))
    assert rounds >= ROUNDS // 2
    assert canary.changes() == []
    for p in canary.path.iterdir():
        assert p.stat(follow_symlinks=False).st_uid == 0


def _clean(home: Path, prefixes: tuple[str, ...]) -> None:
    """Remove the named entries while the attacker may still be swapping them."""
    for _ in range(100):
        left = [n for n in os.listdir(home) if n.startswith(prefixes)]
        if not left:
            return
        for name in left:
            p = home / name
            try:
                if p.is_symlink() or not p.is_dir():
                    p.unlink()
                else:
                    shutil.rmtree(p)
            except OSError:
                pass
    raise AssertionError(f"could not clean {left}")


def test_tree_removal_never_follows_a_swapped_folder(
    tmp_path: Path, victim: Victim, canary: Canary
) -> None:
    """Item 8: root removes a tree the user owns (a quarantine with a process inside,
    a stale staging folder) while the user exchanges a folder in it with a symlink to
    root's canary, whose files have the same names as the folder's."""
    parent = tmp_path / "area"
    parent.mkdir(mode=0o755)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)

    def build() -> None:
        # Made out of the attacker's reach (a root-only folder), then moved into place.
        tree = parent / "build"
        tree.mkdir(mode=0o700)
        for d in ("a", "a/b", "z"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        for i in range(40):
            for d in ("a", "a/b", "z"):
                (tree / d / f"file{i:02d}").write_bytes(b"user data\n")
        os.symlink(str(canary.path), tree / "link")
        chown_tree(tree, victim.uid, victim.gid)
        os.rename(tree, parent / "tree")

    def attack() -> None:
        exchange("tree/a", "tree/link")

    landed = 0
    rounds = 60
    with Attacker(victim.uid, victim.gid, parent, attack) as a:
        for _ in range(rounds):
            build()
            m = a.mark()
            try:
                remove_tree("tree", pfd)
            except OSError:
                pass  # refilled or swapped meanwhile: it may stop, but never escape
            landed += a.landed(m)
            assert canary.changes() == [], canary.changes()
            for _ in range(100):
                try:
                    remove_tree("tree", pfd)
                    break
                except OSError:
                    continue
    os.close(pfd)
    print(report("tree removal with a swapped intermediate folder (8)", rounds, landed, a))
    assert canary.changes() == []


def test_a_moving_home_cannot_be_swapped_under_root(
    lc: Lifecycle, victim: Victim, canary: Canary
) -> None:
    """While archives and restores run, the user exchanges every folder of their home
    with a symlink to root's canary, and swaps the home's entries around: root never
    reads, writes, chowns or deletes outside the home, and the files always come back."""
    user = victim.user
    link = f"{user}/evil"

    def setup() -> None:
        try:
            os.symlink(str(canary.path), link)
        except FileExistsError:
            pass

    def attack() -> None:
        # In bursts: quiet moments let archives through, so that the swaps also land
        # while the home is being moved aside and put back.
        if random.random() < 0.02:
            time.sleep(random.random())  # quiet for a while
            return
        exchange(f"{user}/project", link)
        exchange(f"{user}/project/data", link)
        exchange(f"{user}/project", link)

    os.symlink(str(canary.path), victim.home / "evil")
    os.lchown(victim.home / "evil", victim.uid, victim.gid)
    landed = archived = 0
    with Attacker(victim.uid, victim.gid, lc.layout.root, attack, setup=setup) as a:
        for _ in range(ROUNDS):
            m = a.mark()
            result = archive_home(lc, user)
            archived += result.outcome == "archived"
            if queries.get_home(lc.db, user).state != ACTIVE:
                restore_home(lc, user, "login")
            landed += a.landed(m)
            assert canary.changes() == [], canary.changes()
    print(
        report(
            f"home entries exchanged during archive/restore ({archived} archived)",
            ROUNDS,
            landed,
            a,
        )
    )
    # The user's files are all there, wherever the swaps left them.
    names = set()
    for _dirpath, _dirnames, filenames in os.walk(victim.home):
        names.update(filenames)
    assert {"notes.txt", "analysis.py"} <= names
    assert {f"d{i}.csv" for i in range(5)} <= names
    assert canary.changes() == []
