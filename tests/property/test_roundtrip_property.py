"""Property: restore(backup(t)) == t for random trees, and again after random edits.

Hypothesis builds random trees (nested folders, files of random bytes — empty, small, now
and then several chunks long —, symlinks with arbitrary targets, random modes, ns mtimes,
byte names that need not be UTF-8), materialises them in a temporary folder, backs them
up into a memory store and restores them. It then applies random edits (modify in place
keeping size and mtime, append, truncate, delete, rename, add, hardlink, chmod, touch) and
checks that an incremental backup with the first snapshot as parent restores the edited
tree.

The repository uses a small chunker (4 KiB average) so that multi-chunk files stay cheap.
Profiles: ``hometier-ci`` (25 examples, chosen when ``CI=true``) and ``hometier-dev``
(more); ``HOMETIER_HYPOTHESIS_PROFILE`` picks one explicitly.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from hometier.engine import backup, restore
from hometier.repo import Repository
from hometier.repo.chunker import Chunking
from hometier.repo.config import RepoConfig
from hometier.store import open_store
from treeutil import IS_ROOT, assert_same_tree, snapshot_of_tree

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
settings.register_profile(
    "hometier-ci",
    max_examples=25,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("hometier-dev", settings.get_profile("hometier-ci"), max_examples=60)
PROFILE = os.environ.get("HOMETIER_HYPOTHESIS_PROFILE", "hometier-ci" if IN_CI else "hometier-dev")

CHUNKING = Chunking(min=1024, avg=4096, max=16384)

# --- the model of a tree ----------------------------------------------------------------


@dataclass
class File:
    content: bytes
    mode: int
    mtime: int
    atime: int


@dataclass
class Link:
    target: bytes
    mtime: int


@dataclass
class Dir:
    mode: int
    mtime: int
    children: dict[bytes, File | Link | Dir] = field(default_factory=dict)


def _clean_name(raw: bytes) -> bytes:
    name = raw.replace(b"/", b"_").replace(b"\0", b"_")
    return b"_" + name if name in (b".", b"..") else name


names = st.one_of(
    st.binary(min_size=1, max_size=24).map(_clean_name),
    st.sampled_from(
        [b"\xff\xfe", b"a\nb", b"\n", b" ", b"-rf", b".hidden", "\u00e9t\u00e9".encode()]
    ),
    st.text(min_size=1, max_size=12).map(lambda t: _clean_name(t.encode("utf-8", "surrogatepass"))),
)
times = st.integers(-(2**31) * 10**9, 2**33 * 10**9 - 1)
if IS_ROOT:
    file_modes = st.integers(0, 0o7777)
    dir_modes = st.integers(0, 0o7777)
else:
    # Without root we must still read our own files and enter our own folders.
    file_modes = st.integers(0, 0o1777).map(lambda m: m | 0o600)
    dir_modes = st.integers(0, 0o3777).map(lambda m: m | 0o700)


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


small_contents = st.binary(max_size=300)
large_contents = st.one_of(
    st.builds(_random_bytes, st.integers(0, 2**32), st.integers(CHUNKING.small + 1, 60_000)),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=64), st.integers(100, 2000)),
)
contents = st.integers(0, 9).flatmap(lambda k: large_contents if k == 9 else small_contents)
nonempty_contents = st.integers(0, 9).flatmap(
    lambda k: large_contents if k == 9 else st.binary(min_size=1, max_size=300)
)
files = st.builds(File, contents, file_modes, times, times)
links = st.builds(
    Link, st.binary(min_size=1, max_size=80).map(lambda b: b.replace(b"\0", b"/")), times
)
nodes = st.recursive(
    st.one_of(files, files, links),
    lambda children: st.builds(Dir, dir_modes, times, st.dictionaries(names, children, max_size=5)),
    max_leaves=25,
)
trees = st.builds(Dir, dir_modes, times, st.dictionaries(names, nodes, max_size=8))


def materialise(root: bytes, tree: Dir) -> None:
    """Create ``tree`` at ``root`` (absent): contents first, then modes and times."""
    os.mkdir(root, 0o700)
    _fill(root, tree)
    os.chmod(root, tree.mode)
    os.utime(root, ns=(tree.mtime, tree.mtime))


def _fill(path: bytes, d: Dir) -> None:
    for name, node in d.children.items():
        full = path + b"/" + name
        if isinstance(node, File):
            with open(full, "xb") as f:
                f.write(node.content)
            os.chmod(full, node.mode)
            os.utime(full, ns=(node.atime, node.mtime))
        elif isinstance(node, Link):
            os.symlink(node.target, full)
            os.utime(full, ns=(node.mtime, node.mtime), follow_symlinks=False)
        else:
            os.mkdir(full, 0o700)
            _fill(full, node)
            os.chmod(full, node.mode)
            os.utime(full, ns=(node.mtime, node.mtime))


# --- random edits of a materialised tree ---------------------------------------------------


def _entries(root: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(regular files, other non-folders, folders incl. root), sorted for determinism."""
    regular: list[bytes] = []
    others: list[bytes] = []
    dirs: list[bytes] = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = dirpath + b"/" + name
            st_ = os.lstat(full)
            if stat.S_ISDIR(st_.st_mode):
                dirs.append(full)
            elif stat.S_ISREG(st_.st_mode):
                regular.append(full)
            else:
                others.append(full)
    return sorted(regular), sorted(others), sorted(dirs)


def _fresh_name(data: st.DataObject, folder: bytes) -> bytes:
    existing = set(os.listdir(folder))
    name = data.draw(names, label="name")
    while name in existing:  # cheaper for hypothesis than a filter that may never pass
        name += b"~"
    return name


EDITS = ("modify", "append", "truncate", "delete", "rename", "add", "hardlink", "chmod", "touch")


def edit(data: st.DataObject, root: bytes) -> str:
    """Apply one random edit to the tree at ``root``; returns what it did."""
    regular, others, dirs = _entries(root)
    kind = data.draw(st.sampled_from(EDITS), label="edit")
    if kind in ("modify", "append", "truncate", "hardlink") and not regular:
        kind = "add"
    if kind == "modify" and not any(os.lstat(p).st_size for p in regular):
        kind = "append"
    if kind == "modify":
        # Same size, same mtime, new bytes: only the ctime tells the backup.
        path = data.draw(st.sampled_from([p for p in regular if os.lstat(p).st_size]))
        before = os.lstat(path)
        with open(path, "r+b") as f:
            old = f.read()
            f.seek(0)
            f.write(bytes(b ^ 0x5A for b in old))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return f"modify {path!r}"
    if kind == "append":
        path = data.draw(st.sampled_from(regular))
        with open(path, "ab") as f:
            f.write(data.draw(nonempty_contents, label="appended"))
        return f"append {path!r}"
    if kind == "truncate":
        path = data.draw(st.sampled_from(regular))
        size = os.lstat(path).st_size
        new = data.draw(st.integers(0, max(0, size - 1)), label="size")
        os.truncate(path, new)
        return f"truncate {path!r} to {new}"
    if kind == "delete":
        candidates = regular + others + dirs[1:]
        if not candidates:
            return "nothing to delete"
        path = data.draw(st.sampled_from(candidates))
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return f"delete {path!r}"
    if kind == "rename":
        candidates = regular + others + dirs[1:]
        if not candidates:
            return "nothing to rename"
        path = data.draw(st.sampled_from(candidates))
        into = data.draw(
            st.sampled_from([d for d in dirs if d != path and not d.startswith(path + b"/")])
        )
        new = into + b"/" + _fresh_name(data, into)
        os.rename(path, new)
        return f"rename {path!r} -> {new!r}"
    if kind == "add":
        into = data.draw(st.sampled_from(dirs))
        new = into + b"/" + _fresh_name(data, into)
        what = data.draw(st.sampled_from(["file", "dir", "symlink"]))
        if what == "file":
            with open(new, "xb") as f:
                f.write(data.draw(contents, label="content"))
        elif what == "dir":
            os.mkdir(new)
        else:
            os.symlink(data.draw(st.sampled_from([b"../x", b"/etc", b"\xff"])), new)
        return f"add {what} {new!r}"
    if kind == "hardlink":
        path = data.draw(st.sampled_from(regular))
        into = data.draw(st.sampled_from(dirs))
        new = into + b"/" + _fresh_name(data, into)
        os.link(path, new)
        return f"hardlink {path!r} -> {new!r}"
    if kind == "chmod":
        path = data.draw(st.sampled_from(regular + dirs))
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        mode = data.draw(dir_modes if is_dir else file_modes, label="mode")
        os.chmod(path, mode)
        return f"chmod {path!r} {mode:o}"
    path = data.draw(st.sampled_from(regular + others + dirs))
    when = data.draw(times, label="mtime")
    os.utime(path, ns=(when, when), follow_symlinks=False)
    return f"touch {path!r} {when}"


# --- the properties --------------------------------------------------------------------


def new_repo() -> Repository:
    store = open_store(f"memory://prop-{uuid.uuid4().hex}")
    return Repository.create(store, RepoConfig.new(chunking=CHUNKING))


def _describe(root: bytes) -> dict[Any, Any]:
    return snapshot_of_tree(root)


@settings(settings.get_profile(PROFILE))
@given(tree=trees)
def test_restore_of_backup_is_the_tree(tree: Dir) -> None:
    with tempfile.TemporaryDirectory(prefix="hometier-prop-") as tmp:
        src = os.fsencode(tmp) + b"/src"
        materialise(src, tree)
        expected = _describe(src)
        repo = new_repo()
        snap = backup(repo, os.fsdecode(src), user="prop")
        assert snap.stats.errors == [] and snap.stats.skipped == []
        restore(repo, snap, os.fsdecode(tmp) + "/restored")
        assert_same_tree(expected, _describe(os.fsencode(tmp) + b"/restored"))


@settings(settings.get_profile(PROFILE))
@given(tree=trees, data=st.data())
def test_incremental_backup_after_edits_restores_the_edited_tree(
    tree: Dir, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory(prefix="hometier-prop-") as tmp:
        base = os.fsencode(tmp)
        src = base + b"/src"
        materialise(src, tree)
        original = _describe(src)
        repo = new_repo()
        first = backup(repo, os.fsdecode(src), user="prop")

        for _ in range(data.draw(st.integers(1, 6), label="number of edits")):
            note(edit(data, src))
        edited = _describe(src)

        second = backup(repo, os.fsdecode(src), user="prop", parent=first)
        assert second.stats.errors == []
        restore(repo, second, os.fsdecode(base + b"/new"))
        assert_same_tree(edited, _describe(base + b"/new"))
        restore(repo, first, os.fsdecode(base + b"/old"))
        assert_same_tree(original, _describe(base + b"/old"))
