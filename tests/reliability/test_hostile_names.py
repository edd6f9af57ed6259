"""Hostile user names through the command line: archive, restore, status, lease, exempt.

(``backup``/``restore --target``/``snapshots`` with hostile names are covered by
tests/integration/test_cli.py, the API by tests/e2e/test_api_behaviour.py and
test_api_fuzz.py.)

A name is either refused (exit 2, "Invalid user name", nothing created anywhere: no
folder, no database row, no object) or mapped safely: its home, its quarantine folder,
its lock file and its snapshot prefix are its own, inside the homes root and the
repository, and never shared with another user — including names that look alike
(Cyrillic, fullwidth, zero-width, NFC/NFD) and names whose escaped forms could collide
(``a.b`` / ``a%2Eb`` / ``a_2Eb``, ``%`` / ``%25``).

The commands run in-process (``Hometier.cli`` from the crash suite), one real subprocess
proves what a script sees.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import traceback
from pathlib import Path
from typing import Any

import pytest

from hometier.lifecycle.context import QUARANTINE_DIR
from hometier.lifecycle.loop import run_cycle
from hometier.lifecycle.policy import Policy
from hometier.repo import Repository
from hometier.repo.snapshot import user_from_key, user_key
from hometier.state import queries
from integration.crashutil import Hometier, Result, diff, make_home, manifest
from reliability.conftest import FakeClock, Site

pytestmark = pytest.mark.s3

REFUSED = [
    "..",
    ".",
    "../root",
    "../../etc",
    "a/b",
    "alice/../bob",
    "/etc",
    "",
    "x" * 300,
    "a\0b",
    ".hidden",
    ".hometier-quarantine",
    "a\nb",
    "tab\there",
    "line\u2028sep",
    "\udcff\udcfe",  # bytes that are not UTF-8, as argv decodes them
    "back\\slash",
]
VERBS = [
    ["archive", "{u}"],
    ["restore", "{u}"],
    ["status", "{u}"],
    ["lease", "{u}", "--for", "1h"],
    ["exempt", "{u}"],
]
LOOKALIKES = [
    "alice",
    "\u0430lice",  # Cyrillic a
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
    "alice\u200b",  # zero-width space
    "ALICE",
    "\u00e9mile",  # NFC
    "e\u0301mile",  # NFD
]
ESCAPES = ["a.b", "a%2Eb", "a_2Eb", "a-b", "a_b", "%", "%25", "a%", "a b", "a+b", "lost+found"]


def _run(ht: Hometier, *argv: str) -> Result:
    """``ht.cli`` that turns an escaping exception into a result (code None) instead of
    failing the test on the spot."""
    try:
        return ht.cli(*argv)
    except Exception:  # noqa: BLE001 - what escaped is the finding
        return Result(-1, "", traceback.format_exc())


def _tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root`` except the state database (written on every open)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if "state.db" in name:
                continue
            st = os.lstat(p)
            if name in dirnames:  # a folder's mtime moves with the database's journal
                out[os.path.relpath(p, root)] = (st.st_mode,)
            else:
                out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def ht(tmp_path: Path, s3_url: str) -> Hometier:
    h = Hometier(
        tmp_path / "site",
        s3_url,
        f"sqlite:///{tmp_path}/site/state.db",
        {"Hometier.pack_size_mb": 1, "Hometier.workers": 2},
    )
    make_home(h.home("alice"), 1, big=64 * 1024)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "root-secret").write_text("never touched\n")
    assert h.cli("archive", "alice").code == 0  # a repository and a database exist
    return h


def _repo(ht: Hometier) -> Repository:
    from hometier.store import open_store

    return Repository.open(open_store(ht.store))


@pytest.mark.parametrize("user", REFUSED, ids=lambda u: repr(u)[1:21])
def test_hostile_names_are_refused_and_touch_nothing(
    user: str, ht: Hometier, tmp_path: Path
) -> None:
    before = _tree(tmp_path)
    homes_before = {h["user"] for h in ht.cli("status", "--json").json}
    keys_before = _repo(ht).snapshot_keys()

    for verb in VERBS:
        r = _run(ht, *[a.replace("{u}", user) for a in verb])
        said = " ".join(r.err.split())
        if user == "" and verb[0] == "status":
            # argparse gives "" for USER, which status reads as "every home" (read-only).
            assert r.code == 0, str(r)
        elif user == "" and verb[0] == "lease":
            assert r.code == 2 and "lease needs a USER" in said, str(r)
        else:
            assert r.code == 2, (verb, str(r))
            assert "Invalid user name" in said, (verb, r.err)

    after = _tree(tmp_path)
    assert after == before, diff(before, after)
    assert {h["user"] for h in ht.cli("status", "--json").json} == homes_before
    assert _repo(ht).snapshot_keys() == keys_before


def test_the_real_command_refuses_a_traversal(ht: Hometier, tmp_path: Path) -> None:
    for argv in (["archive", "../outside"], ["restore", "../outside"], ["lease", "/etc"]):
        p = subprocess.run(
            ht.argv(*argv), env=ht.env(), capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 2, (argv, p.stderr)
        assert "Invalid user name" in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(tmp_path / "outside")) == ["root-secret"]


@pytest.mark.parametrize("group", ["lookalikes", "escapes"])
def test_distinct_names_never_share_a_home_a_quarantine_or_a_snapshot_prefix(
    group: str, ht: Hometier
) -> None:
    users = LOOKALIKES if group == "lookalikes" else ESCAPES
    users = [u for u in users if u != "alice"]  # alice is archived by the fixture
    want = {}
    for seed, user in enumerate(users, 10):
        make_home(ht.home(user), seed, big=32 * 1024)
        want[user] = manifest(ht.home(user))
    for user in users:
        r = _run(ht, "archive", user, "--json")
        assert r.code == 0, f"{user!r}: {r}"
        assert r.json["outcome"] == "archived", (user, r.json)
        assert _run(ht, "lease", user, "--for", "1m", "--json").code == 0
        assert _run(ht, "status", user, "--json").json["user"] == user

    # One quarantine folder and one snapshot prefix per user, each decoding to its user.
    quarantine = sorted(os.listdir(ht.homes / QUARANTINE_DIR))
    owners = [user_from_key(q.rsplit(".", 1)[0]) for q in quarantine if not q.startswith(".")]
    assert sorted(owners, key=str) == sorted(["alice", *users], key=str), quarantine
    repo = _repo(ht)
    prefixes: dict[str, set[str]] = {}
    for snap in repo.list_snapshots():
        key = next(k for k in repo.snapshot_keys(snap.user) if k.endswith(snap.id))
        prefixes.setdefault(key.split("/")[1], set()).add(snap.user)
    for prefix, owners_of in prefixes.items():
        assert len(owners_of) == 1 and user_from_key(prefix) in owners_of, (prefix, owners_of)
    assert {user_key(u) for u in users} <= set(prefixes)
    assert len({user_key(u) for u in users}) == len(users)

    # Each gets exactly its own files back.
    for user in users:
        r = _run(ht, "restore", user, "--json")
        assert r.code == 0, f"{user!r}: {r}"
        got = manifest(ht.home(user))
        assert got == want[user], f"{user!r}: {diff(want[user], got)}"
    assert sorted(os.listdir(ht.homes)) == sorted(["alice", *users, QUARANTINE_DIR])


# --- long names: valid, and longer than a file name may be once escaped --------------------

LONG = {
    "ascii-255": "x" * 255,
    "ascii-250": "y" * 250,
    "cyrillic-45": "\u0430\u043b\u0435\u043a\u0441\u0430\u043d\u0434\u0440\u0430" * 4
    + "\u043e\u043b\u044c\u0433\u0430",
    "cjk-30": "\u5c71\u7530\u592a\u90ce" * 7 + "\u5b50\u5b50",
}


@pytest.mark.parametrize("name", sorted(LONG))
def test_a_long_valid_name_is_archived_and_restored_or_refused_up_front(
    name: str, ht: Hometier
) -> None:
    """BUG (fails at aabb61d): the lock file ``.hometier-quarantine/.locks/<user_key>.lock`` and the
    quarantine folder ``<user_key>.<id12>`` are file names, limited to 255 bytes, and
    ``user_key`` escapes every byte outside ``[A-Za-z0-9_-]`` as three characters: a
    valid name whose key is longer than 242 characters (243 ASCII letters, 41 Cyrillic
    or 27 CJK characters) cannot get its quarantine folder, longer than 250 not even its
    lock. ``hometier archive`` dies with a raw ``OSError: [Errno 36] File name too
    long`` (a traceback): before the database step (lifecycle/locks.py ``home_lock``) or
    — worse — after it (cycle.py ``_move_to_quarantine``: the home is then recorded
    ``archived`` while every file is still in it, each later ``recover()`` fails again,
    and every login fails too — restoring.py ``_from_volume`` calls
    ``quarantine.is_dir()``, which raises ENAMETOOLONG: the user is locked out of a home
    whose files are all there). Either ``check_username`` refuses such names up front, or the lock and
    quarantine names are bounded (e.g. a hash of the name past a length)."""
    user = LONG[name]
    home = ht.home(user)
    make_home(home, 7, big=16 * 1024)
    want = manifest(home)
    print(
        f"{name}: {len(user)} characters, {len(os.fsencode(user))} bytes, "
        f"user_key {len(user_key(user))} characters"
    )
    r = _run(ht, "archive", user, "--json")
    if r.code == 2 and "Invalid user name" in r.err:
        assert manifest(home) == want
        return
    archived = f"exit {r.code}" + (f": {r.err.strip().splitlines()[-1][:90]}…" if r.err else "")
    state = ht.states().get(user)
    assert manifest(home) == want or state == "archived", "files left an unarchived home"
    back = None
    login = "-"
    if state != "active":  # cold in the database: the next login restores
        back = _run(ht, "restore", user, "--json")
        login = f"exit {back.code} {' '.join(back.err.split())[-120:]}"
    print(f"{name}: state {state}; login: {login}; archive {archived}")
    assert r.code == 0 and r.json["outcome"] == "archived", (
        f"state {state}; login: {login}; archive {archived}"
    )
    assert back is not None and back.code == 0, f"the user cannot log in: {back}"
    assert manifest(home) == want


def test_a_long_name_among_others_does_not_stop_the_cycle(tmp_path: Path, s3_url: str) -> None:
    """The idlest home has a long name (bug of the test above): the cycle must still
    archive the others, and archive that one or report it in ``report.errors``.

    BUG (fails at aabb61d): ``run_cycle`` (lifecycle/loop.py) catches only
    ``hometier.errors.Error`` around ``archive_claimed``; the ``OSError`` a too-long lock
    name raises (cycle.py ``_archive`` re-raises every non-``Error``) ends the whole
    cycle, so every home chosen after it is never archived, cycle after cycle."""
    homes = tmp_path / "homes"
    homes.mkdir()
    site = Site(tmp_path, homes, s3_url, f"sqlite:///{tmp_path}/state.db", FakeClock())
    long_name = "z" * 250
    site.make_home(long_name, 1, big=16 * 1024)  # created first: the idlest
    site.make_home("bob", 2, big=16 * 1024)
    site.clock.advance(days=40)
    lc = site.lifecycle(policy=Policy(inactive_after=dt.timedelta(days=30)))
    try:
        try:
            report = run_cycle(lc)
        except OSError as exc:
            pytest.fail(f"the cycle died on one home: {exc!r}")
        assert queries.get_home(lc.db, "bob").state == "archived", report
        long_state = queries.get_home(lc.db, long_name).state
        reported = any(long_name[:20] in e for e in report.errors)
        assert long_state == "archived" or reported, (long_state, report.errors)
    finally:
        site.close()


def test_a_home_replaced_by_a_symlink_is_never_restored_through_it(
    ht: Hometier, tmp_path: Path
) -> None:
    """``homes/mallory`` is swapped for a symlink to a folder outside the homes root
    while mallory is archived (possible where the home's parent is writable by the user,
    e.g. ``home_template = "{username}/home"``, or by an operator's mistake). A restore
    must not write through it.

    BUG (fails at aabb61d): the restore from the quarantine (the default while the quarantine is
    kept) goes through restoring.py ``_perform`` → ``_from_volume``: ``notice.unlink()``,
    ``path.mkdir(parents=True, exist_ok=True)`` (a symlink to a folder passes) and
    ``moves.move_entries(quarantine, path)``, which renames each entry to
    ``path + b"/" + name``, resolving the symlink: every file of the home lands in the
    outside folder, ``compare_tree`` (which scans through the symlink too) agrees, and
    the home is recorded ``active``. The bucket restore refuses it
    (engine/restore.py ``_check_target``: "it is a symbolic link"). Fix: refuse a home
    path that is not a real folder (``os.lstat``) before anything moves, and move with
    ``rename_noreplace(..., dst_dir_fd=<O_DIRECTORY|O_NOFOLLOW fd of the home>)``."""
    make_home(ht.home("mallory"), 5, big=16 * 1024)
    assert ht.cli("archive", "mallory").code == 0
    outside = tmp_path / "outside"
    before = sorted(os.listdir(outside))
    home = ht.home("mallory")
    for p in home.iterdir():
        p.chmod(0o644)
        p.unlink()
    home.rmdir()
    os.symlink(outside, home)

    r = _run(ht, "restore", "mallory", "--json")
    print(f"restore through a symlinked home: exit {r.code}: {r.err[-400:]}")
    assert sorted(os.listdir(outside)) == before, "the restore wrote outside the homes root"
    assert r.code != 0


def _documented_key(user: str) -> str:
    """The user key exactly as docs/format.md ("The user key") defines it."""
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    raw = user.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw) or "%"


@pytest.mark.parametrize(
    "user", ["\u00e9" * 34, "x" * 230, "first.last" * 20], ids=["key-204", "key-230", "key-240"]
)
def test_snapshots_filed_under_the_documented_user_key_are_found(user: str, tmp_path: Path) -> None:
    """A repository written to docs/format.md — ``snapshots/<user key>/<id>``, the key
    being the plain escape, whatever its length — must keep serving its users: such
    snapshots exist for every name whose key is over 200 characters (``hometier backup``
    never needed a lock or a quarantine name; ``archive`` worked up to 242).

    REGRESSION (fails from fed4fca): ``repo/snapshot.py`` ``user_key`` now cuts a key
    longer than ``MAX_KEY = 200`` and appends a hash, so ``Repository.snapshot_keys`` /
    ``list_snapshots`` look under a new prefix and find nothing: an archived home whose
    snapshots were filed under the documented key cannot be restored after the upgrade
    (``NothingToRestore``), and docs/format.md still documents the plain key. Keep the
    documented key for the repository (S3 keys may be 1024 bytes) and bound only the
    names on the homes volume (lock file, quarantine folder), or look under both keys."""
    from hometier.engine import backup
    from hometier.store import open_store

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    url = f"file://{tmp_path}/repo"
    store = open_store(url)
    repo = Repository.open_or_create(store)[0]
    snap = backup(repo, home, user=user)
    filed = f"snapshots/{user_key(user)}/{snap.id}"
    documented = f"snapshots/{_documented_key(user)}/{snap.id}"
    if filed != documented:  # what an earlier hometier wrote
        store.put(documented, store.get(filed))
        store.delete(filed)
    print(f"key: documented {len(_documented_key(user))} chars, now {len(user_key(user))}")

    again = Repository.open(open_store(url))
    assert [s.id for s in again.list_snapshots(user)] == [snap.id]
    assert again.find_snapshot("latest", user).id == snap.id
