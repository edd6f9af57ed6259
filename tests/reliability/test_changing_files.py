"""Files that change while the archiver walks the home.

The walk is staged, not raced: the real engine is wrapped at the moment the change must
happen — ``_Archiver._file`` (the walk reached a regular file, before it is read; main
thread) or ``iter_chunks`` (the file is open and its first chunk was read; a reader
thread) — and the wrapper changes the tree once. In every case the cycle must not delete
the home (outcome ``changed``: it is kept as it is now, ``active``) and the next archive,
with nothing changing, succeeds and restores to what was then on disk.

Unreadable files: as root every file is readable (DAC override), so ``chmod 000`` proves
nothing here. What root meets for real is a volume that refuses it (NFS with
``root_squash``, a FUSE filesystem without ``allow_root``); that ``EACCES`` is staged by
making ``os.open`` (as the engine sees it) refuse one file, and ``os.scandir`` one folder.

A folder swapped for a symlink while the walk is inside it must not make the archiver
read through the symlink: the walk resolves every path from the home's root again, so
names listed before the swap are opened through the symlink afterwards
(test_a_folder_swapped_for_a_symlink_mid_walk_is_never_read_through).
"""

from __future__ import annotations

import errno
import os
import shutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import archive as engine_archive
from hometier.engine import restore
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import restore_home
from hometier.state import ACTIVE, ARCHIVED, queries
from reliability.conftest import MiB, Site, manifest, only_notice

pytestmark = pytest.mark.s3

SECRET = b"a secret that is not mallory's: 7f3a9c\n"


def _quarantined(site: Site) -> list[str]:
    q = site.homes / ".hometier-quarantine"
    return sorted(p.name for p in q.iterdir() if not p.name.startswith(".")) if q.is_dir() else []


def _assert_kept_and_archived_later(site: Site, user: str, result: Any) -> None:
    """The cycle kept the home; the next archive (nothing changing) succeeds."""
    home = site.home(user)
    assert result.outcome == "changed", (result.outcome, result.reason, result.details)
    lc = site.lifecycle()
    assert queries.get_home(lc.db, user).state == ACTIVE
    assert _quarantined(site) == [], "files were moved although the home changed"
    assert not only_notice(home)
    now = manifest(home)
    again = archive_home(lc, user)
    assert again.outcome == "archived", (again.reason, again.details)
    assert queries.get_home(lc.db, user).state == ARCHIVED
    assert restore_home(site.lifecycle(), user, "login").outcome == "restored"
    assert manifest(home) == now


def _on_file(monkeypatch: pytest.MonkeyPatch, rel: bytes, change: Any) -> list[bool]:
    """Run ``change()`` once, when the walk reaches the regular file ``rel``."""
    fired: list[bool] = []
    real = engine_archive._Archiver._file

    def _file(self: Any, dfd: int, name: bytes, r: bytes, *a: Any, **kw: Any) -> None:
        if r == rel and not fired:
            fired.append(True)
            change()
        return real(self, dfd, name, r, *a, **kw)

    monkeypatch.setattr(engine_archive._Archiver, "_file", _file)
    return fired


def _mid_read(monkeypatch: pytest.MonkeyPatch, change: Any) -> list[bool]:
    """Run ``change()`` once, after the first chunk of the first large file was read."""
    fired: list[bool] = []
    real = engine_archive.iter_chunks

    def iter_chunks(fd: int, length: int, chunking: Any, offset: int = 0) -> Iterator[bytes]:
        for i, chunk in enumerate(real(fd, length, chunking, offset)):
            yield chunk
            if i == 0 and length > MiB and not fired:
                fired.append(True)
                change()

    monkeypatch.setattr(engine_archive, "iter_chunks", iter_chunks)
    return fired


# --- contents change while being read ---------------------------------------------------------


def _grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(os.urandom(512 * 1024))


def _shrink(path: Path) -> None:
    os.truncate(path, 1000)


def _rewrite_same_size(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(b"changed in place")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime tells


@pytest.mark.parametrize(
    "change",
    [_grow, _shrink, os.unlink, _rewrite_same_size],
    ids=["grows", "truncated", "deleted-while-open", "rewritten-mtime-restored"],
)
def test_a_file_changing_while_it_is_read_keeps_the_home(
    change: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("alice", 1)
    big = home / "data" / "big-0.bin"
    fired = _mid_read(monkeypatch, lambda: change(big))
    result = archive_home(site.lifecycle(), "alice")
    assert fired
    print(f"{change.__name__}: {result.outcome}: {result.reason} {result.details}")
    monkeypatch.undo()
    _assert_kept_and_archived_later(site, "alice", result)


def test_a_file_deleted_before_it_is_opened_keeps_the_home(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("bob", 2)
    fired = _on_file(monkeypatch, b"data/small.csv", lambda: os.unlink(home / "data" / "small.csv"))
    result = archive_home(site.lifecycle(), "bob")
    assert fired
    monkeypatch.undo()
    _assert_kept_and_archived_later(site, "bob", result)


def test_a_file_added_behind_the_walk_keeps_the_home(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("carol", 3)
    fired = _on_file(
        monkeypatch, b"notes.txt", lambda: (home / "bin" / "new.txt").write_text("new\n")
    )
    result = archive_home(site.lifecycle(), "carol")
    assert fired
    monkeypatch.undo()
    _assert_kept_and_archived_later(site, "carol", result)


# --- folders swapped for something else --------------------------------------------------------


def _outside(site: Site) -> Path:
    """A folder outside every home holding a root-only file named like one in ``data``."""
    out = site.root / "outside"
    out.mkdir(exist_ok=True)
    (out / "small.csv").write_bytes(SECRET)
    (out / "small.csv").chmod(0o600)
    return out


def _swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".old"))
    os.symlink(target, folder)


def _swap_for_file(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.write_text("now a file\n")


@pytest.mark.parametrize("swap", [_swap_for_symlink, _swap_for_file], ids=["symlink", "file"])
@pytest.mark.parametrize("when", ["before-the-walk-enters", "inside-it"])
def test_a_folder_replaced_mid_walk_keeps_the_home(
    swap: Any, when: str, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("dave", 4)
    outside = _outside(site)
    # "bin/run.sh" is walked before "data" is entered; "data/big-0.bin" inside it.
    rel = b"bin/run.sh" if when == "before-the-walk-enters" else b"data/big-0.bin"
    fired = _on_file(monkeypatch, rel, lambda: swap(home / "data", outside))
    result = archive_home(site.lifecycle(), "dave")
    assert fired
    print(f"{swap.__name__} {when}: {result.outcome}: {result.reason} {result.details}")
    monkeypatch.undo()
    _assert_kept_and_archived_later(site, "dave", result)


@pytest.mark.parametrize("target", ["another-users-home", "root-only-folder"])
def test_a_folder_swapped_for_a_symlink_mid_walk_is_never_read_through(
    target: str, site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mallory swaps her ``data`` folder for a symlink — to bob's ``data`` (a home on
    the same volume) or to a root-only folder — while the walk is inside it. The home is
    kept (its ``data`` changed type), but the snapshot the walk wrote must hold nothing
    from outside her home: it is in the repository, recorded in the database, and its
    files can be browsed and downloaded by mallory through the API, whatever their
    recorded owner and mode.

    BUG (fails at aabb61d): engine/archive.py ``_Archiver.archive_dir`` lists a folder with
    ``os.scandir(path)`` and then calls ``os.lstat(path + b"/" + name)`` and
    ``_read_file`` ``os.open(path, O_NOFOLLOW)`` on full paths: ``O_NOFOLLOW`` guards
    only the last component, so once ``data`` is a symlink, ``data/small.csv`` resolves
    through it and the root archiver stores bob's ``data/small.csv`` (0600, bob's) in
    mallory's snapshot; the ``fstat`` inode check in ``_read_file`` compares with the
    ``lstat`` made through the same symlink, so it does not notice. A sub-folder name
    leads the walk into any folder on the same filesystem the same way. Fix: walk with
    descriptors — ``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``,
    ``os.scandir(fd)``, ``os.lstat(name, dir_fd=fd)``, ``os.open(name, O_NOFOLLOW,
    dir_fd=fd)`` — and check that the folder opened is the one listed (device and
    inode), as engine/restore.py already does for writing."""
    home = site.make_home("mallory", 5)
    if target == "another-users-home":
        bob = site.make_home("bob", 6)
        outside = bob / "data"
        (outside / "small.csv").write_bytes(SECRET)
        os.chown(outside / "small.csv", 1001, 1001)
        (outside / "small.csv").chmod(0o600)
    else:
        outside = _outside(site)
    fired = _on_file(
        monkeypatch, b"data/big-0.bin", lambda: _swap_for_symlink(home / "data", outside)
    )
    lc = site.lifecycle()
    result = archive_home(lc, "mallory")
    assert fired
    monkeypatch.undo()
    assert result.outcome == "changed"
    assert result.snapshot is not None, "no snapshot was written"
    assert [s.id for s in queries.list_snapshots(lc.db, "mallory")] == [result.snapshot]

    snap = lc.repo.find_snapshot(result.snapshot, "mallory")
    scratch = tmp_path / "what-the-snapshot-holds"
    restore(lc.repo, snap, scratch, workers=2)
    leaked = [
        str(p.relative_to(scratch))
        for p in scratch.rglob("*")
        if p.is_file() and not p.is_symlink() and SECRET in p.read_bytes()
    ]
    assert leaked == [], f"mallory's snapshot holds a file from outside her home: {leaked}"


# --- unreadable entries (EACCES as root meets it on NFS root_squash) ----------------------------


def _full_path(path: Any, dir_fd: int | None) -> bytes | None:
    """The real path a call names, whether given whole, relative to ``dir_fd``, through
    ``/proc/self/fd/N/...`` or as a descriptor (the walk may work any of these ways)."""
    if isinstance(path, int):
        return os.fsencode(os.readlink(f"/proc/self/fd/{path}"))
    if not isinstance(path, bytes | str):
        return None
    p = os.fsencode(path)
    if dir_fd is not None and not p.startswith(b"/"):
        p = os.fsencode(os.readlink(f"/proc/self/fd/{dir_fd}")) + b"/" + p
    return os.path.realpath(p)


class _Refusing(types.ModuleType):
    """``os`` as the engine sees it, except that the calls in ``calls`` refuse one path
    with ``EACCES`` — what root gets from NFS ``root_squash`` on a 0600 file or a 0700
    folder of someone else."""

    def __init__(self, refuse: bytes, calls: frozenset[str]) -> None:
        super().__init__("os")
        self._refuse = refuse
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self._calls:
            return real

        def refusing(path: Any, *a: Any, **kw: Any) -> Any:
            if _full_path(path, kw.get("dir_fd")) == self._refuse:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real(path, *a, **kw)

        return refusing


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_unreadable_entry_keeps_the_home_and_is_read_once_readable(
    what: str, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = site.make_home("frank", 6)
    if what == "file":
        target, calls = home / "data/small.csv", frozenset({"open"})
    else:
        target, calls = home / "bin", frozenset({"open", "scandir", "listdir"})
    refuse = os.path.realpath(os.fsencode(target))
    monkeypatch.setattr(engine_archive, "os", _Refusing(refuse, calls))
    result = archive_home(site.lifecycle(), "frank")
    print(f"unreadable {what}: {result.outcome}: {result.reason} {result.details}")
    assert any("Permission denied" in d for d in result.details), result.details
    monkeypatch.undo()
    _assert_kept_and_archived_later(site, "frank", result)


def test_a_home_emptied_while_archived_is_not_mistaken_for_archived(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything deleted behind the walk: the snapshot holds files the disk no longer
    has; the home must not be recorded archived over an empty folder it never moved."""
    home = site.make_home("gina", 7)

    def wipe() -> None:
        for p in list(home.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    fired = _on_file(monkeypatch, b"notes.txt", wipe)
    result = archive_home(site.lifecycle(), "gina")
    assert fired
    monkeypatch.undo()
    assert result.outcome == "changed", result
    assert queries.get_home(site.lifecycle().db, "gina").state == ACTIVE
    assert _quarantined(site) == []
