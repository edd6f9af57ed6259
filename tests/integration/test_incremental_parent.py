"""An incremental backup compares what is on disk with the parent's trees without decoding
them whole: an entry is judged unchanged field by field, and a folder whose every entry
is unchanged keeps the parent's tree id. These tests attack that judgement with parents
whose trees say something subtly different from what is on disk: a value JSON gives as
``true`` or ``1.0`` (equal to 1 in Python, refused by the decoder), an entry gone, one
replaced by another type under the same name, an unknown extra field. The new snapshot
must describe the disk exactly, decode, and restore byte for byte."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, restore
from hometier.errors import IntegrityError
from hometier.repo import BlobType, Repository
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import decode_tree, raw_nodes
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.create(open_store(f"file://{tmp_path / 'repo'}"))


def _settled(repo: Repository, home: Path) -> Snapshot:
    """A snapshot of ``home`` that the next backup of an untouched ``home`` repeats: the
    first backup's reading of the folders moves their atime (relatime), the second
    records it."""
    return backup(repo, home, user="u", parent=backup(repo, home, user="u"))


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "a.txt").write_bytes(b"alpha\n")
    (home / "sub" / "b.txt").write_bytes(b"beta\n" * 100)
    (home / "link").symlink_to("a.txt")
    os.chmod(home / "a.txt", 0o644)
    return home


def _forged_parent(repo: Repository, real: Snapshot, edit) -> Snapshot:  # type: ignore[no-untyped-def]
    """``real`` with its root tree's raw entries passed through ``edit`` (a forged tree
    of the same folders; its blobs are real)."""
    doc = json.loads(repo.read_blob(real.tree))
    doc["nodes"] = edit(doc["nodes"])
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    writer = repo.writer()
    tree, _ = writer.add(BlobType.TREE, raw)
    writer.flush()
    writer.close()
    forged = Snapshot(user=real.user, time_ns=real.time_ns, tree=tree, stats=real.stats)
    repo.save_snapshot(forged)
    return forged


def _entry(nodes: list[dict], name: str) -> dict:  # type: ignore[type-arg]
    return next(d for d in nodes if d.get("name") == name)


def _with(name: str, **fields: Any) -> Callable[[list[dict]], list[dict]]:  # type: ignore[type-arg]
    """An edit for ``_forged_parent``: the entry ``name`` with ``fields`` set."""

    def edit(nodes: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        _entry(nodes, name).update(fields)
        return nodes

    return edit


def _then_backup(repo: Repository, home: Path, parent: Snapshot, tmp_path: Path) -> Snapshot:
    before = snapshot_of_tree(home)
    again = backup(repo, home, user="u", parent=parent)
    decode_tree(repo.read_blob(again.tree))  # the new root tree decodes
    out = tmp_path / "out"
    restore(repo, again, out)
    assert_same_tree(before, snapshot_of_tree(out))
    return again


@pytest.mark.parametrize(
    "field, value",
    [("mode", float(0o644)), ("atime", True), ("mtime", None)],
    ids=["mode as 420.0", "atime as true", "mtime as a float"],
)
def test_a_value_equal_in_python_but_not_an_integer_is_not_the_parents(
    repo: Repository, tmp_path: Path, field: str, value: object
) -> None:
    home = _home(tmp_path)
    # atime 1 (JSON's true equals it), mtime 2**60 (a float holds it exactly).
    os.utime(home / "a.txt", ns=(1, 1 << 60))
    first = _settled(repo, home)

    def edit(nodes: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        d = _entry(nodes, "a.txt")
        d[field] = float(d["mtime"]) if value is None else value
        assert d[field] == {"mode": 0o644, "atime": 1, "mtime": 1 << 60}[field]
        return nodes

    forged = _forged_parent(repo, first, edit)
    with pytest.raises(IntegrityError):
        decode_tree(repo.read_blob(forged.tree))  # what reusing it would have stored
    again = _then_backup(repo, home, forged, tmp_path)
    assert again.tree == first.tree, "the folder is encoded again, as the disk says"
    assert again.tree != forged.tree


def test_an_entry_gone_from_disk_is_gone_from_the_tree(repo: Repository, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = backup(repo, home, user="u")
    (home / "sub" / "b.txt").unlink()
    os.utime(home / "sub", ns=(5, 5))  # the folder's own attributes look untouched
    st = os.stat(home / "sub")
    again = _then_backup(repo, home, first, tmp_path)
    assert again.tree != first.tree
    assert not (tmp_path / "out" / "sub" / "b.txt").exists()
    assert st.st_mtime_ns == 5


def test_a_file_replaced_by_a_symlink_of_the_same_name(repo: Repository, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = backup(repo, home, user="u")
    (home / "a.txt").unlink()
    (home / "a.txt").symlink_to("sub/b.txt")
    again = _then_backup(repo, home, first, tmp_path)
    assert again.tree != first.tree
    assert os.readlink(tmp_path / "out" / "a.txt") == "sub/b.txt"


def test_an_unknown_field_in_the_parent_changes_nothing(repo: Repository, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = _settled(repo, home)
    assert backup(repo, home, user="u", parent=first).tree == first.tree
    forged = _forged_parent(repo, first, _with("a.txt", future={"x": 1}))
    assert [n.name for n in decode_tree(repo.read_blob(forged.tree))] == [
        n.name for n in decode_tree(repo.read_blob(first.tree))
    ]
    again = _then_backup(repo, home, forged, tmp_path)
    # The decoded entries are the disk's: the parent's tree is kept, as a decoded
    # comparison kept it.
    assert again.tree == forged.tree


def test_a_malformed_content_id_of_an_unchanged_file_is_refused(
    repo: Repository, tmp_path: Path
) -> None:
    home = _home(tmp_path)
    first = backup(repo, home, user="u")
    forged = _forged_parent(repo, first, _with("a.txt", content=["not-a-blob-id"]))
    before = set(repo.snapshot_keys("u"))
    with pytest.raises(IntegrityError, match="malformed blob id"):
        backup(repo, home, user="u", parent=forged)
    assert set(repo.snapshot_keys("u")) == before, "no snapshot written"


def test_a_name_twice_in_the_parent_is_refused(repo: Repository, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = backup(repo, home, user="u")

    def edit(nodes: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return [*nodes, dict(_entry(nodes, "a.txt"))]

    forged = _forged_parent(repo, first, edit)
    assert len(raw_nodes(repo.read_blob(forged.tree))) == 4
    with pytest.raises(IntegrityError, match="same name twice"):
        backup(repo, home, user="u", parent=forged)


def test_a_symlink_whose_target_the_parent_recorded_otherwise(
    repo: Repository, tmp_path: Path
) -> None:
    """Same attributes, inode and times, another target in the parent: the disk wins."""
    home = _home(tmp_path)
    first = _settled(repo, home)
    forged = _forged_parent(repo, first, _with("link", target="sub/b.txt"))
    again = _then_backup(repo, home, forged, tmp_path)
    assert again.tree == first.tree != forged.tree
    assert os.readlink(tmp_path / "out" / "link") == "a.txt"


def test_a_parent_tree_out_of_order_is_written_again(repo: Repository, tmp_path: Path) -> None:
    """Trees are canonical (sorted by name): one that is not is never kept, even for a
    folder that did not change."""
    home = _home(tmp_path)
    first = _settled(repo, home)
    forged = _forged_parent(repo, first, lambda nodes: nodes[::-1])
    again = _then_backup(repo, home, forged, tmp_path)
    assert again.tree == first.tree != forged.tree


def test_a_file_whose_inode_the_parent_gives_as_a_float_is_read_again(
    repo: Repository, tmp_path: Path
) -> None:
    home = _home(tmp_path)
    first = _settled(repo, home)

    def edit(nodes: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        d = _entry(nodes, "a.txt")
        d["ino"] = float(d["ino"])
        assert d["ino"] == os.lstat(home / "a.txt").st_ino
        return nodes

    forged = _forged_parent(repo, first, edit)
    again = _then_backup(repo, home, forged, tmp_path)
    assert again.stats.files_read == 1, "its content is not taken from that entry"
    assert again.tree == first.tree


def test_an_unsafe_name_in_the_parent_is_refused(repo: Repository, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = backup(repo, home, user="u")

    def edit(nodes: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return [*nodes, {**_entry(nodes, "a.txt"), "name": "../escape"}]

    forged = _forged_parent(repo, first, edit)
    with pytest.raises(IntegrityError, match="unsafe name"):
        backup(repo, home, user="u", parent=forged)
