"""restore(backup(tree)) == tree, on every store, for every fidelity item in DESIGN.md.

The source tree comes from ``treeutil.make_fidelity_tree``; trees are compared with
``treeutil.snapshot_of_tree`` (type, mode, owners, ns mtimes, link targets, rdev, user
xattrs, content, hardlink groups, file atimes). Owners and device nodes need root; as
another user the tree is built without them and the root-only tests skip.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hometier.engine.archive as archive_mod
from hometier.engine import TargetNotEmpty, backup, check, restore
from hometier.repo import Repository
from hometier.repo.repository import SnapshotNotFound
from hometier.repo.snapshot import Snapshot
from hometier.store import open_store
from hometier.store.errors import ObjectNotFound
from treeutil import (
    HARDLINKS,
    IS_ROOT,
    FidelityTree,
    MiB,
    allocated,
    assert_same_tree,
    make_fidelity_tree,
    record_calls,
    snapshot_of_tree,
)

TREE_SLACK = 64 * 1024
"""More than every tree blob of the fidelity tree together (a few KiB)."""


def open_repo(url: str) -> Repository:
    repo, _created = Repository.open_or_create(open_store(url))
    return repo


def memory_repo() -> Repository:
    return open_repo(f"memory://{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FidelityTree, dict]]:
    """One fidelity tree for the module (tests must not change it) and its description."""
    tree = make_fidelity_tree(tmp_path_factory.mktemp("fidelity") / "home")
    expected = snapshot_of_tree(tree.root)
    yield tree, expected
    # The tree must still be what it was: backups only read.
    assert_same_tree(expected, snapshot_of_tree(tree.root))


def test_the_fidelity_tree_holds_what_it_promises(fidelity: tuple[FidelityTree, dict]) -> None:
    tree, expected = fidelity
    types = {d["type"] for k, d in expected.items() if k != HARDLINKS}
    assert {"file", "dir", "symlink", "fifo"} <= types
    assert any(len(g) == 3 for g in expected[HARDLINKS])
    assert expected[b"sticky"]["mode"] == 0o1777
    assert expected[b"setgid"]["mode"] & stat.S_ISGID
    assert expected[b"setuid"]["mode"] & stat.S_ISUID
    assert expected[b"xattr-file"]["xattrs"] and expected[b"xattr-dir"]["xattrs"]
    assert expected[b"link-dangling"]["type"] == "symlink"
    assert expected[b"\xff\xfe"]["type"] == "file"
    assert expected[b"line\nbreak"]["type"] == "file"
    assert expected[tree.big]["size"] == tree.big_size > 4 * MiB
    assert allocated(tree.path(tree.sparse)) < MiB < tree.sparse_size
    assert tree.socket is not None and stat.S_ISSOCK(os.lstat(tree.path(tree.socket)).st_mode)
    assert tree.socket not in expected
    if IS_ROOT:
        assert {"chr", "blk"} <= types
        assert expected[b"no-permissions"]["mode"] == 0
        assert (expected[b"a/b/c/d/deep.txt"]["uid"], expected[b"a/b/c/d/deep.txt"]["gid"]) == (
            1234,
            5678,
        )


def check_sparse(tree: FidelityTree, restored: Path) -> None:
    for rel in (tree.sparse, tree.hole_only):
        path = os.fsencode(restored) + b"/" + rel
        size = os.lstat(path).st_size
        assert allocated(path) < size // 20, f"{rel!r} is no longer sparse"


# --- round trips -------------------------------------------------------------------


def test_fidelity_roundtrip(
    store_url: str, fidelity: tuple[FidelityTree, dict], tmp_path: Path
) -> None:
    tree, expected = fidelity
    repo = open_repo(store_url)
    snap = backup(repo, os.fsdecode(tree.root), user="alice")
    assert len(snap.stats.skipped) == 1 and "socket" in snap.stats.skipped[0]
    assert snap.stats.errors == [] and snap.stats.changed == []
    assert snap.stats.complete

    # A fresh handle, as a restore on another machine would have.
    again = Repository.open(open_store(store_url))
    stored = again.find_snapshot(snap.id, "alice")
    target = tmp_path / "restored"
    stats = restore(again, stored, target)
    assert stats.skipped == []
    assert_same_tree(expected, snapshot_of_tree(target))
    check_sparse(tree, target)
    report = check(again, read_data=True)
    assert report.ok and report.snapshots == 1 and report.packs_read >= 1


def test_restore_into_an_existing_empty_folder(
    fidelity: tuple[FidelityTree, dict], tmp_path: Path
) -> None:
    tree, expected = fidelity
    repo = memory_repo()
    snap = backup(repo, os.fsdecode(tree.root), user="alice")
    target = tmp_path / "home"
    target.mkdir(mode=0o700)
    restore(repo, snap, target)
    assert_same_tree(expected, snapshot_of_tree(target))
    check_sparse(tree, target)
    # Nothing left beside or inside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_restore_into_an_absent_folder_whose_parents_are_missing(
    fidelity: tuple[FidelityTree, dict], tmp_path: Path
) -> None:
    tree, expected = fidelity
    repo = memory_repo()
    snap = backup(repo, os.fsdecode(tree.root), user="alice")
    target = tmp_path / "x" / "y" / "home"
    restore(repo, snap, target)
    assert_same_tree(expected, snapshot_of_tree(target))
    assert sorted(p.name for p in target.parent.iterdir()) == ["home"]


@pytest.fixture
def small_snapshot(tmp_path: Path) -> tuple[Repository, Snapshot]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"content")
    (src / "dir").mkdir()
    (src / "dir" / "inner").write_bytes(b"inner")
    repo = memory_repo()
    return repo, backup(repo, src, user="alice")


def _listing(root: Path) -> dict[Any, Any]:
    return snapshot_of_tree(root, atime=False)


def test_restore_refuses_a_non_empty_folder_and_changes_nothing(
    small_snapshot: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    repo, snap = small_snapshot
    target = tmp_path / "home"
    target.mkdir()
    (target / "precious").write_bytes(b"do not lose me")
    (target / "file").write_bytes(b"same name as in the snapshot")
    before = _listing(tmp_path)
    with pytest.raises(TargetNotEmpty) as info:
        restore(repo, snap, target)
    assert "not an empty folder" in str(info.value)
    assert_same_tree(before, _listing(tmp_path))


def test_restore_refuses_a_symlink_even_to_an_empty_folder(
    small_snapshot: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    repo, snap = small_snapshot
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "home"
    target.symlink_to(tmp_path / "elsewhere")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    before = _listing(tmp_path)
    for link in (target, dangling):
        with pytest.raises(TargetNotEmpty) as info:
            restore(repo, snap, link)
        assert "symbolic link" in str(info.value)
    assert_same_tree(before, _listing(tmp_path))
    assert not (tmp_path / "nowhere").exists()


def test_restore_refuses_a_regular_file(
    small_snapshot: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    repo, snap = small_snapshot
    target = tmp_path / "home"
    target.write_bytes(b"a file, not a folder")
    before = _listing(tmp_path)
    with pytest.raises(TargetNotEmpty):
        restore(repo, snap, target)
    assert_same_tree(before, _listing(tmp_path))


def test_restore_never_overwrites_what_appears_in_the_target_meanwhile(
    small_snapshot: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    """A user's server may write into the home while its restore runs: keep those files."""
    repo, snap = small_snapshot
    target = tmp_path / "home"
    target.mkdir()

    def meanwhile(_progress: Any) -> None:
        if not (target / "file").exists():
            (target / "file").write_bytes(b"written by the user during the restore")

    try:
        restore(repo, snap, target, progress=meanwhile)
    except Exception:  # noqa: BLE001 - refusing is fine too; clobbering is not
        pass
    assert (target / "file").read_bytes() == b"written by the user during the restore"
    assert not [p for p in target.iterdir() if p.name.startswith(".hometier-restore-")]


# --- incremental ---------------------------------------------------------------------


def test_second_backup_with_parent_reads_nothing(
    store_url: str, fidelity: tuple[FidelityTree, dict], tmp_path: Path
) -> None:
    tree, expected = fidelity
    repo = open_repo(store_url)
    first = backup(repo, os.fsdecode(tree.root), user="alice")
    second = backup(repo, os.fsdecode(tree.root), user="alice", parent=first)
    s = second.stats
    assert (s.files_read, s.bytes_read) == (0, 0)
    assert (s.files, s.bytes) == (first.stats.files, first.stats.bytes)
    # Only trees may be new (a folder's atime moves when the first backup lists it).
    assert s.bytes_new_stored < TREE_SLACK
    assert second.parent == first.id
    assert [x.id for x in repo.list_snapshots("alice")] == [first.id, second.id]
    restore(repo, second, tmp_path / "restored")
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "restored"))


def _append(path: bytes, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_incremental_backup_after_edits_stores_only_what_changed(
    store_url: str, tmp_path: Path
) -> None:
    tree = make_fidelity_tree(tmp_path / "home")
    original = snapshot_of_tree(tree.root)
    repo = open_repo(store_url)
    first = backup(repo, os.fsdecode(tree.root), user="alice")

    appended = os.urandom(1000)
    _append(tree.path(tree.big), appended)
    _append(tree.path(b"small.txt"), b"one more line\n")
    os.unlink(tree.path(b"medium.bin"))
    os.rename(tree.path(b"a/b/c/d/deep.txt"), tree.path(b"a/moved.txt"))
    with open(tree.path(b"a/b/new \xff file"), "wb") as f:
        f.write(os.urandom(5000))
    with open(tree.path(b"empty-dir/new"), "wb") as f:
        f.write(b"new file in a formerly empty folder")
    os.chmod(tree.path(b"read-only"), 0o400)
    os.utime(tree.path(b"compressible.txt"), ns=(1, 1_500_000_000_123_456_789))
    os.unlink(tree.path(b"a/hardlink-2"))
    edited = snapshot_of_tree(tree.root)
    assert edited != original

    second = backup(repo, os.fsdecode(tree.root), user="alice", parent=first)
    s = second.stats
    chunk_max = repo.config.chunking.max
    # Appending to the big file rewrites at most its last chunk plus the new bytes.
    assert s.bytes_new_stored < chunk_max + len(appended) + TREE_SLACK
    assert s.bytes_new_stored < tree.big_size // 2
    assert s.files_read < s.files // 2
    # Of the big files only the edited one is read again (plus the touched 2 MB one).
    assert s.bytes_read < tree.big_size + 4 * MiB

    restore(repo, second, tmp_path / "new")
    assert_same_tree(edited, snapshot_of_tree(tmp_path / "new"))
    # The first snapshot still restores the original tree.
    restore(repo, first, tmp_path / "old")
    assert_same_tree(original, snapshot_of_tree(tmp_path / "old"))


def test_files_changed_while_being_read_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "growing").write_bytes(os.urandom(3 * MiB))
    (src / "shrinking").write_bytes(os.urandom(3 * MiB))
    (src / "quiet").write_bytes(b"nothing happens to me")
    real = archive_mod.iter_chunks

    def meddling(fd: int, length: int, params: Any, offset: int = 0) -> Iterator[bytes]:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        for i, chunk in enumerate(real(fd, length, params, offset)):
            if i == 0 and name == "growing":
                _append(os.fsencode(src / "growing"), b"written meanwhile")
            if i == 0 and name == "shrinking":
                os.truncate(src / "shrinking", MiB)
            yield chunk

    monkeypatch.setattr(archive_mod, "iter_chunks", meddling)
    repo = memory_repo()
    snap = backup(repo, src, user="alice")
    changed = "\n".join(snap.stats.changed)
    assert "growing" in changed
    assert "shrinking" in changed
    assert "quiet" not in changed
    # A changed file does not make the snapshot unusable.
    restore(repo, snap, tmp_path / "restored")
    assert (tmp_path / "restored" / "quiet").read_bytes() == b"nothing happens to me"


# --- root-only fidelity, and gaps found -------------------------------------------------


@pytest.mark.root
def test_owners_setuid_and_device_nodes_survive(
    fidelity: tuple[FidelityTree, dict], tmp_path: Path
) -> None:
    tree, _expected = fidelity
    repo = memory_repo()
    restore(repo, backup(repo, os.fsdecode(tree.root), user="alice"), tmp_path / "r")
    r = os.fsencode(tmp_path / "r")
    st = os.lstat(r + b"/a/b/c/d/deep.txt")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.lstat(r + b"/link-relative")
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (3456, 7890)
    st = os.lstat(r + b"/setuid")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1234, 0o4755)
    st = os.lstat(r + b"/setgid")
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (8765, 0o2775)
    st = os.lstat(r + b"/char-dev")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    st = os.lstat(r + b"/block-dev")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)


def test_user_xattrs_of_the_archived_folder_itself_survive(tmp_path: Path) -> None:
    """The home folder's own ``user.*`` attributes are part of the home (tar keeps them)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"x")
    os.setxattr(src, b"user.quota-class", b"gold")
    expected = snapshot_of_tree(src)
    repo = memory_repo()
    snap = backup(repo, src, user="alice")
    restore(repo, snap, tmp_path / "restored")
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "restored"))


def test_hardlinked_fifos_stay_hardlinked(tmp_path: Path) -> None:
    """GNU tar keeps hardlinks between any non-folders, FIFOs and device nodes included."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    os.link(src / "pipe", src / "pipe-again")
    expected = snapshot_of_tree(src)
    assert expected[HARDLINKS] == {frozenset({b"pipe", b"pipe-again"})}
    repo = memory_repo()
    restore(repo, backup(repo, src, user="alice"), tmp_path / "restored")
    assert_same_tree(expected, snapshot_of_tree(tmp_path / "restored"))


def test_an_unreadable_file_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backup`` promises: unreadable entries go to ``stats.errors``, the rest is archived.

    Root reads everything, so as root the file is made unreadable the way NFS with
    root_squash or a FUSE mount does it: ``open`` fails with EACCES.
    """
    src = tmp_path / "src"
    src.mkdir()
    (src / "readable").write_bytes(b"fine")
    secret = src / "secret"
    secret.write_bytes(b"not for you")
    secret.chmod(0o000)
    if IS_ROOT:
        real_open = os.open

        def squashed(
            path: Any, flags: int, *args: Any, dir_fd: int | None = None, **kw: Any
        ) -> int:
            # The engine opens entries by name relative to their open folder (openat).
            where = os.fsdecode(path)
            if dir_fd is not None:
                where = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), where)
            if os.path.realpath(where) == os.path.realpath(secret):
                raise PermissionError(13, "Permission denied", where)
            return real_open(path, flags, *args, dir_fd=dir_fd, **kw)

        monkeypatch.setattr(archive_mod.os, "open", squashed)
    repo = memory_repo()
    snap = backup(repo, src, user="alice")
    monkeypatch.undo()
    assert any("secret" in e for e in snap.stats.errors), snap.stats
    assert not snap.stats.complete
    restore(repo, snap, tmp_path / "restored")
    assert (tmp_path / "restored" / "readable").read_bytes() == b"fine"


def test_a_snapshot_named_by_its_whole_id_is_read_without_a_listing(
    store_url: str, tmp_path: Path
) -> None:
    """What a restore at login does with the id its archive recorded: one read of the
    known key, no LIST of the user's snapshots; another user's name, a missing id and
    a short prefix still answer as before."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    repo = open_repo(store_url)
    snap = backup(repo, str(home), user="alice")
    other = backup(repo, str(home), user="bob")

    again = Repository.open(open_store(store_url))
    listed = record_calls(again.store, "list")
    assert again.find_snapshot(snap.id, "alice").id == snap.id
    assert not [p for p in listed if p.startswith("snapshots/")]
    with pytest.raises(SnapshotNotFound):
        again.find_snapshot(other.id, "alice")  # bob's snapshot is not alice's
    with pytest.raises(SnapshotNotFound):
        again.find_snapshot("0" * 64, "alice")
    assert again.find_snapshot(snap.id[:10], "alice").id == snap.id


@pytest.mark.parametrize("inline", [False, True], ids=["reader-thread", "hardlinked"])
def test_a_failure_to_store_content_fails_the_backup_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """An OSError from storing a file's content (a full spool, a broken index cache) is
    the backup's failure: before, the reader took it for the file's own and recorded
    the file as unreadable, and the backup went on to save a snapshot without it."""
    from hometier.engine.archive import BackupError
    from hometier.repo import BlobType
    from hometier.repo.writer import BlobWriter

    home = tmp_path / "home"
    home.mkdir()
    (home / "a.txt").write_bytes(b"first file\n" * 100)
    if inline:  # a file with two names is read on the walking thread
        os.link(home / "a.txt", home / "b.txt")
    repo = memory_repo()
    real_add = BlobWriter.add

    def failing_add(self: BlobWriter, typ: BlobType, data: bytes, *a: Any, **kw: Any) -> Any:
        if typ == BlobType.DATA:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, typ, data, *a, **kw)

    monkeypatch.setattr(BlobWriter, "add", failing_add)
    with pytest.raises(BackupError, match="storing its content failed"):
        backup(repo, str(home), user="alice")
    assert repo.list_snapshots("alice") == []


# --- two processes creating one repository --------------------------------------------


def test_open_meets_a_config_written_between_its_get_and_its_listing() -> None:
    """Another process creates the repository after ``open`` found no config and before
    it listed the location: the location now holds a repository, not "other data"."""
    store = open_store(f"memory://{uuid.uuid4()}")
    other = Repository.create(open_store(store.url))
    real_get, calls = store.get, []

    def get(key: str, *a: Any, **kw: Any) -> Any:
        calls.append(key)
        if len(calls) == 1:  # the first look, taken before the other process wrote
            raise ObjectNotFound(key)
        return real_get(key, *a, **kw)

    store.get = get  # type: ignore[method-assign]
    repo, created = Repository.open_or_create(store)
    assert not created and repo.config.id == other.config.id


@pytest.mark.s3
def test_processes_creating_one_repository_at_once_all_open_it(s3_url: str) -> None:
    """Rounds of four processes running ``open_or_create`` on one empty location: every
    one opens the same repository (one creates it), none calls it "other data"."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from hometier.repo import Repository\n"
        "from hometier.store import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "real, looks = store.get, []\n"
        "store.get = lambda key, *a, **k: looks.append(key) or real(key, *a, **k)\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "repo, created = Repository.open_or_create(store)\n"
        "print(repo.config.id, created, looks.count('config'))\n"
    )
    import time

    late = 0  # processes that found no config at first, yet did not create it
    for n in range(6):
        url = f"{s3_url}-{n}"
        start = str(time.time() + 1.5)  # released together, after their imports
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, url, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, errs) in zip(procs, outs, strict=True):
            assert p.returncode == 0, errs[-2000:]
        ids = {o.split()[0] for o, _ in outs}
        created = [o.split()[1] for o, _ in outs].count("True")
        assert len(ids) == 1 and created == 1, outs
        late += sum(1 for o, _ in outs if o.split()[1] == "False" and int(o.split()[2]) > 1)
    print(f"6 rounds of 4 processes, one creating each time; {late} of 18 others met it late")
