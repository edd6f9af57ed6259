"""Repositories crafted by hand to attack restore: it must refuse, write nothing outside
the target, leave the target absent (or still empty) and stay bounded in memory.

Whoever can write to the bucket can make a repository say anything with valid hashes (the
blob key is in the config), so every test here builds its trees and snapshots through the
normal writer and only the *content* is hostile: names that are paths, links that lead
out, sizes that lie, a decompression bomb. Restore is the line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard

from hometier.engine import RestoreError, TargetNotEmpty, backup, restore
from hometier.errors import Error, IntegrityError
from hometier.repo import BlobId, BlobType, Repository
from hometier.repo.ids import Compression, pack_key, plain_hash
from hometier.repo.index import PackRecord
from hometier.repo.pack import PackBuilder
from hometier.repo.snapshot import Snapshot, user_key
from hometier.repo.tree import Node, encode_tree
from hometier.repo.writer import BlobWriter
from hometier.store import open_store
from treeutil import assert_same_tree, snapshot_of_tree

STAGING = ".hometier-restore-"
MiB = 1024 * 1024
RSS_BUDGET_KB = 300 * 1024
"""How much a bomb may grow the restoring process's peak memory."""


# --- the outside world, watched -----------------------------------------------------------


def _fingerprint(path: Path) -> Any:
    """Everything about ``path`` that a stray write would change (lstat, never followed)."""
    st = os.lstat(path)
    out: dict[str, Any] = {"": (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)}
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                digest = ""
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                out[os.path.relpath(full, path)] = (
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_mtime_ns,
                    st.st_size,
                    digest,
                )
    elif stat.S_ISREG(st.st_mode):
        out["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class World:
    """A repository to forge, an outside folder with a canary, and a place to restore."""

    tmp: Path
    repo: Repository
    outside: Path
    area: Path
    watched: dict[Path, Any] = field(default_factory=dict)
    _writer: BlobWriter | None = None

    @property
    def target(self) -> Path:
        return self.area / "home"

    def watch(self, *paths: Path) -> None:
        for p in paths:
            self.watched[p] = _fingerprint(p)

    def assert_untouched(self) -> None:
        for p, before in self.watched.items():
            assert _fingerprint(p) == before, f"{p} was changed by the restore"

    # --- forging -------------------------------------------------------------------------

    @property
    def writer(self) -> BlobWriter:
        if self._writer is None:
            self._writer = self.repo.writer()
        return self._writer

    def data(self, content: bytes) -> BlobId:
        return self.writer.add(BlobType.DATA, content)[0]

    def tree(self, nodes: list[Node] | dict[str, Any] | bytes) -> BlobId:
        if isinstance(nodes, list):
            raw = encode_tree(nodes)
        elif isinstance(nodes, dict):
            raw = json.dumps(nodes, sort_keys=True, separators=(",", ":")).encode()
        else:
            raw = nodes
        return self.writer.add(BlobType.TREE, raw)[0]

    def snapshot(self, tree: BlobId, root: dict[str, int] | None = None) -> str:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        snap = Snapshot(user="mallory", time_ns=1_800_000_000_000_000_000, tree=tree)
        if root is not None:
            snap.root = root
        return self.repo.save_snapshot(snap)

    def restore_fails(self, sid: str, *, existing: bool, processes: int | None = None) -> Error:
        """Restore ``sid`` the way the service does (``processes``: writer processes
        forced, as a home of many files gets them); it must fail cleanly."""
        target = self.target
        if existing:
            target.mkdir()
        self.watch(self.outside, Path("/etc/passwd"))
        repo = Repository.open(open_store(self.repo.store.url))
        try:
            snap = repo.find_snapshot(sid)
            restore(repo, snap, target, processes=processes)
        except Error as exc:
            error = exc
        except Exception as exc:
            # Short: a RecursionError's traceback alone is thousands of lines.
            tail = "".join(traceback.format_exception(exc)[-6:])
            pytest.fail(f"restore raised {type(exc).__name__}, not a hometier Error:\n{tail}")
        else:
            pytest.fail(f"restore of a hostile snapshot succeeded: {sorted(os.listdir(target))}")
        msg = str(error)
        assert msg.strip() and "\n" not in msg.strip(), msg
        self.assert_untouched()
        if existing:
            assert target.is_dir() and not target.is_symlink()
            assert os.listdir(target) == [], f"failed restore left {os.listdir(target)} in target"
            assert os.listdir(self.area) == ["home"], os.listdir(self.area)
        else:
            assert os.listdir(self.area) == [], f"failed restore left {os.listdir(self.area)}"
        return error


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "canary").write_bytes(b"do not touch\n")
    (outside / "sub" / "x").write_bytes(b"nor this\n")
    os.utime(outside / "sub", ns=(1, 2))
    area = tmp_path / "area"
    area.mkdir()
    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    yield World(tmp_path, repo, outside, area)
    # A failed test may leave a staging folder ~1000 levels deep, which Python 3.11's
    # recursive shutil.rmtree (pytest's tmp_path cleanup too) cannot remove.
    subprocess.run(["rm", "-rf", "--", str(area)], check=False)


def _file(name: bytes, content: list[BlobId], size: int, **kw: Any) -> Node:
    return Node(name=name, type="file", mode=0o644, size=size, content=content, **kw)


def _dir(name: bytes, subtree: BlobId, **kw: Any) -> Node:
    return Node(name=name, type="dir", mode=0o755, subtree=subtree, **kw)


def _symlink(name: bytes, target: bytes) -> Node:
    return Node(name=name, type="symlink", mode=0o777, target=target)


def _hardlink(name: bytes, link: bytes) -> Node:
    return Node(name=name, type="file", mode=0o644, link=link)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# --- the hostile cases ----------------------------------------------------------------------
# Each builds a snapshot in ``w`` and returns its id, plus words the error must contain
# (so that the refusal is the one intended, not an accident further on).

Case = Callable[[World], tuple[str, str]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


def _named(w: World, name: bytes, kind: str = "file") -> str:
    payload = w.data(b"pwned\n")
    inner = w.tree([_file(b"pwned", [payload], 6)])
    node = _dir(name, inner) if kind == "dir" else _file(name, [payload], 6)
    return w.snapshot(w.tree([node]))


for _label, _name, _kind in [
    ("name-dotdot-dir", b"..", "dir"),
    ("name-dotdot-file", b"..", "file"),
    ("name-dot-dir", b".", "dir"),
    ("name-slash", b"a/b", "file"),
    ("name-absolute", b"/etc/passwd", "file"),
    ("name-absolute-dir", b"/tmp", "dir"),
    ("name-empty", b"", "file"),
    ("name-nul", b"a\0b", "file"),
    ("name-too-long", b"n" * 5000, "file"),
]:
    CASES[_label] = lambda w, _n=_name, _k=_kind: (_named(w, _n, _k), "unsafe name")


@case("name-b64-dotdot")
def _name_b64(w: World) -> tuple[str, str]:
    sub = w.tree([])
    doc = {"version": 1, "nodes": [{"name_b64": _b64(b".."), "type": "dir", "subtree": sub.hex()}]}
    return w.snapshot(w.tree(doc)), "unsafe name"


@case("name-b64-slash")
def _name_b64_slash(w: World) -> tuple[str, str]:
    blob = w.data(b"x")
    node = {"name_b64": _b64(b"../x"), "type": "file", "size": 1, "content": [blob.hex()]}
    return w.snapshot(w.tree({"version": 1, "nodes": [node]})), "unsafe name"


@case("name-lone-surrogate")
def _name_surrogate(w: World) -> tuple[str, str]:
    # JSON may escape a lone surrogate; it has no UTF-8 form, so no file can be named so.
    node = {"name": "a\ud800", "type": "file", "size": 1, "content": [w.data(b"x").hex()]}
    return w.snapshot(w.tree({"version": 1, "nodes": [node]})), "not valid UTF-8"


@case("symlink-target-lone-surrogate")
def _target_surrogate(w: World) -> tuple[str, str]:
    node = {"name": "link", "type": "symlink", "target": "/etc/\udcff"}
    return w.snapshot(w.tree({"version": 1, "nodes": [node]})), "not valid UTF-8"


@case("duplicate-names")
def _duplicates(w: World) -> tuple[str, str]:
    a, b = w.data(b"first\n"), w.data(b"second\n")
    tree = w.tree([_file(b"same", [a], 6), _file(b"same", [b], 7)])
    return w.snapshot(tree), "same name twice"


@case("symlink-then-dir-of-same-name")
def _symlink_then_dir(w: World) -> tuple[str, str]:
    inner = w.tree([_file(b"canary", [w.data(b"overwritten\n")], 12)])
    tree = w.tree([_symlink(b"link", str(w.outside).encode()), _dir(b"link", inner)])
    return w.snapshot(tree), "same name twice"


@case("dir-then-symlink-of-same-name")
def _dir_then_symlink(w: World) -> tuple[str, str]:
    inner = w.tree([_file(b"canary", [w.data(b"overwritten\n")], 12)])
    tree = w.tree([_dir(b"link", inner), _symlink(b"link", str(w.outside).encode())])
    return w.snapshot(tree), "same name twice"


@case("hardlink-through-symlink")
def _hardlink_through_symlink(w: World) -> tuple[str, str]:
    tree = w.tree([_symlink(b"link", str(w.outside).encode()), _hardlink(b"y", b"link/canary")])
    return w.snapshot(tree), "hardlink"


@case("hardlink-through-symlink-in-subdir")
def _hardlink_through_nested_symlink(w: World) -> tuple[str, str]:
    sub = w.tree([_symlink(b"out", str(w.outside).encode())])
    tree = w.tree([_dir(b"d", sub), _hardlink(b"y", b"d/out/sub/x")])
    return w.snapshot(tree), "hardlink"


@case("hardlink-dotdot")
def _hardlink_dotdot(w: World) -> tuple[str, str]:
    return w.snapshot(w.tree([_hardlink(b"passwd", b"../../etc/passwd")])), "unsafe hardlink"


@case("hardlink-absolute")
def _hardlink_absolute(w: World) -> tuple[str, str]:
    return w.snapshot(w.tree([_hardlink(b"passwd", b"/etc/passwd")])), "unsafe hardlink"


@case("hardlink-to-symlink")
def _hardlink_to_symlink(w: World) -> tuple[str, str]:
    tree = w.tree([_hardlink(b"h", b"s"), _symlink(b"s", b"/etc/passwd")])
    return w.snapshot(tree), "hardlink"


@case("hardlink-to-dir")
def _hardlink_to_dir(w: World) -> tuple[str, str]:
    tree = w.tree([_dir(b"d", w.tree([])), _hardlink(b"h", b"d")])
    return w.snapshot(tree), "hardlink"


@case("hardlink-to-itself")
def _hardlink_to_itself(w: World) -> tuple[str, str]:
    return w.snapshot(w.tree([_hardlink(b"h", b"h")])), "hardlink"


@case("hardlink-to-missing")
def _hardlink_to_missing(w: World) -> tuple[str, str]:
    return w.snapshot(w.tree([_hardlink(b"h", b"nowhere")])), "hardlink"


@case("content-longer-than-size")
def _content_longer(w: World) -> tuple[str, str]:
    blob = w.data(b"x" * 100)
    return w.snapshot(w.tree([_file(b"f", [blob], 50)])), "does not fit"


@case("content-shorter-than-size")
def _content_shorter(w: World) -> tuple[str, str]:
    blob = w.data(b"x" * 100)
    return w.snapshot(w.tree([_file(b"f", [blob], 200)])), "shorter"


@case("content-longer-than-sparse-extents")
def _content_longer_sparse(w: World) -> tuple[str, str]:
    blob = w.data(b"y" * 100)
    node = _file(b"f", [blob, blob], 1000, sparse=[(0, 100), (500, 50)])
    return w.snapshot(w.tree([node])), "does not fit"


@case("enormous-sparse-size")
def _enormous_sparse(w: World) -> tuple[str, str]:
    blob = w.data(b"z" * 4096)
    node = _file(b"f", [blob], 2**62, sparse=[(0, 4096), (2**62 - 4096, 4096)])
    return w.snapshot(w.tree([node])), ""


@case("enormous-size")
def _enormous(w: World) -> tuple[str, str]:
    blob = w.data(b"z" * 4096)
    return w.snapshot(w.tree([_file(b"f", [blob], 2**62)])), "shorter"


@case("tree-version-99")
def _version_99(w: World) -> tuple[str, str]:
    doc = json.loads(encode_tree([_file(b"f", [], 0)]))
    doc["version"] = 99
    return w.snapshot(w.tree(doc)), "unknown version"


@case("tree-not-json")
def _tree_not_json(w: World) -> tuple[str, str]:
    return w.snapshot(w.tree(b"\x00\x01 not a tree")), "not valid JSON"


@case("subtree-is-a-data-blob")
def _subtree_is_data(w: World) -> tuple[str, str]:
    data = w.data(b"just some file content, certainly not JSON" * 3)
    return w.snapshot(w.tree([_dir(b"d", data)])), "not valid JSON"


@case("tree-references-missing-subtree")
def _missing_subtree(w: World) -> tuple[str, str]:
    ghost = BlobId(bytes(range(32)))
    return w.snapshot(w.tree([_dir(b"d", ghost)])), "not in the index"


@case("tree-references-missing-content")
def _missing_content(w: World) -> tuple[str, str]:
    ghost = BlobId(bytes(range(1, 33)))
    return w.snapshot(w.tree([_file(b"f", [ghost], 10)])), "not in the index"


@case("snapshot-root-tree-missing")
def _missing_root(w: World) -> tuple[str, str]:
    return w.snapshot(BlobId(bytes(32))), "not in the index"


@case("snapshot-not-json")
def _snapshot_not_json(w: World) -> tuple[str, str]:
    data = b"\x89PNG\r\n this is not a snapshot document"
    sid = plain_hash(data).hex()
    w.repo.store.put(f"snapshots/{user_key('mallory')}/{sid}", data)
    return sid, "malformed"


@case("snapshot-tree-not-hex")
def _snapshot_tree_not_hex(w: World) -> tuple[str, str]:
    doc = json.loads(Snapshot(user="mallory", time_ns=1, tree=BlobId(bytes(32))).to_bytes())
    doc["tree"] = "../../etc/passwd"
    data = json.dumps(doc).encode()
    sid = plain_hash(data).hex()
    w.repo.store.put(f"snapshots/{user_key('mallory')}/{sid}", data)
    return sid, "malformed"


@case("snapshot-time-infinite")
def _snapshot_time_infinite(w: World) -> tuple[str, str]:
    # Python's json reads the non-standard Infinity; int(inf) is an OverflowError.
    tree = w.tree([])
    w.snapshot(tree)
    doc = json.loads(Snapshot(user="mallory", time_ns=1, tree=tree).to_bytes())
    doc["time_ns"] = float("inf")
    data = json.dumps(doc).encode()
    sid = plain_hash(data).hex()
    w.repo.store.put(f"snapshots/{user_key('mallory')}/{sid}", data)
    return sid, "malformed"


@case("xattr-name-with-nul")
def _xattr_nul(w: World) -> tuple[str, str]:
    node = _file(b"f", [w.data(b"abc")], 3, xattrs={b"user.a\0b": b"v"})
    return w.snapshot(w.tree([node])), ""


@case("too-deep")
def _too_deep(w: World) -> tuple[str, str]:
    tree = w.tree([])
    for _ in range(1002):
        tree = w.tree([_dir(b"d", tree)])
    return w.snapshot(tree), "deeper"


# A snapshot's own root attributes are applied to the target folder itself.
for _label, _root in [
    ("root-uid-out-of-range", {"mode": 0o700, "uid": 2**40}),
    ("root-gid-negative", {"mode": 0o700, "gid": -5}),
    ("root-mode-out-of-range", {"mode": 2**40}),
]:
    CASES[_label] = lambda w, _r=_root: (
        w.snapshot(w.tree([_file(b"f", [w.data(b"restored\n")], 9)]), root=_r),
        "",
    )


@pytest.mark.parametrize(
    ("existing", "processes"),
    [(False, None), (True, None), (False, 2)],
    ids=["absent-target", "empty-target", "writers"],
)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_snapshot_is_refused(
    world: World, name: str, existing: bool, processes: int | None
) -> None:
    sid, words = CASES[name](world)
    error = world.restore_fails(sid, existing=existing, processes=processes)
    assert isinstance(error, RestoreError | IntegrityError), repr(error)
    assert words in str(error), f"refused for another reason than expected: {error}"


def test_refusal_message_does_not_echo_a_huge_hostile_name(world: World) -> None:
    """The message is shown on the spawn page and logged: a name of many kilobytes (the
    very thing refused) must be shortened, not repeated whole."""
    sid, _ = CASES["name-too-long"](world)
    error = world.restore_fails(sid, existing=False)
    assert "unsafe name" in str(error)
    assert len(str(error)) < 1000, f"message is {len(str(error))} characters long"


def test_attributes_are_restored_as_the_snapshot_says_and_never_onto_a_link(world: World) -> None:
    """Every attribute of a tree is put back as root (fidelity: capabilities and
    ``trusted.*`` too — whoever can write the bucket can already make a set-id file, so
    the bucket is as trusted as root and must be protected like it; docs/format.md).
    What the tree cannot do is reach outside the target: attributes land on the file
    the restore created, through its descriptor."""
    cap = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + bytes(12)
    node = _file(
        b"f",
        [world.data(b"abc")],
        3,
        xattrs={b"user.ok": b"yes", b"trusted.mark": b"kept", b"security.capability": cap},
    )
    sid = world.snapshot(world.tree([node]))
    stats = restore(world.repo, world.repo.find_snapshot(sid), world.target)
    names = os.listxattr(world.target / "f", follow_symlinks=False)
    if os.geteuid() == 0:
        assert {"user.ok", "trusted.mark", "security.capability"} <= set(names)
        assert stats.skipped == []
    else:
        assert "user.ok" in names
        assert any("trusted.mark" in s for s in stats.skipped)


# --- decompression bombs, in a child process so that its peak memory is its own ----------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from hometier.engine import check, restore
    from hometier.errors import Error
    from hometier.repo import Repository
    from hometier.store import open_store

    url, sid, target, what = sys.argv[1:]
    repo = Repository.open(open_store(url))
    snap = repo.find_snapshot(sid)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        if what == "restore":
            restore(repo, snap, target)
        else:
            check(repo, read_data=True)
        error = None
    except Error as exc:
        error = f"{type(exc).__name__}: {exc}"
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"error": error, "grew_kb": after - before}))
    """
)


def _run_child(url: str, sid: str, target: Path, what: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, url, sid, str(target), what],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _zero_frame(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes (content size in the header), built in steps."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1)
    zero = bytes(MiB)
    with cctx.stream_writer(out, size=size, closefd=False) as writer:
        for _ in range(size // MiB):
            writer.write(zero)
    return out.getvalue()


def _forge_pack(w: World, blobs: list[tuple[BlobId, BlobType, Compression, bytes, int]]) -> None:
    builder = PackBuilder()
    for bid, typ, comp, stored, raw_len in blobs:
        builder.add(bid, typ, comp, stored, raw_len)
    pid, data, entries = builder.seal()
    w.repo.store.put(pack_key(pid), data)
    w.repo.write_index([PackRecord(pid, len(data), entries)])


@pytest.mark.parametrize("kind", ["data", "tree"])
def test_decompression_bomb_is_refused_in_bounded_memory(world: World, kind: str) -> None:
    bomb = _zero_frame(1024 * MiB)
    assert len(bomb) < MiB and zstandard.get_frame_parameters(bomb).content_size == 1024 * MiB
    claimed = b"\0" * 4096  # what the bomb pretends to be
    bid = world.repo.blob_id(claimed)
    if kind == "data":
        _forge_pack(world, [(bid, BlobType.DATA, Compression.ZSTD, bomb, len(claimed))])
        sid = world.snapshot(world.tree([_file(b"bomb", [bid], len(claimed))]))
    else:
        _forge_pack(world, [(bid, BlobType.TREE, Compression.ZSTD, bomb, len(claimed))])
        sid = world.snapshot(bid)
    world.watch(world.outside)

    for what in ("restore", "check"):
        result = _run_child(world.repo.store.url, sid, world.target, what)
        assert result["error"] is not None, f"{what} accepted a decompression bomb"
        assert (
            "IntegrityError" in result["error"]
            or "RestoreError" in result["error"]
            or ("CheckFailed" in result["error"])
        ), result["error"]
        assert result["grew_kb"] < RSS_BUDGET_KB, f"{what} grew by {result['grew_kb']} KiB"
    assert not os.path.lexists(world.target)
    assert os.listdir(world.area) == []
    world.assert_untouched()


def test_index_bomb_is_refused_in_bounded_memory(world: World) -> None:
    """A 32 KiB object under ``index/`` that inflates to 512 MiB of zeros: loading the
    index (which every restore does first) must refuse it without inflating it all."""
    sid = world.snapshot(world.tree([_file(b"f", [world.data(b"fine\n")], 5)]))
    bomb = _zero_frame(512 * MiB)
    world.repo.store.put(f"index/{plain_hash(bomb).hex()}", bomb)

    result = _run_child(world.repo.store.url, sid, world.target, "restore")
    assert result["error"] is not None
    assert result["grew_kb"] < RSS_BUDGET_KB, (
        f"loading a {len(bomb)}-byte index object grew memory by {result['grew_kb']} KiB"
    )
    assert not os.path.lexists(world.target)


# --- symlinks in a real home are archived as links and never followed --------------------


def test_home_with_links_to_etc_and_another_home_is_archived_as_links(tmp_path: Path) -> None:
    homes = tmp_path / "homes"
    alice, bob = homes / "alice", homes / "bob"
    (bob / "private").mkdir(parents=True)
    secret = b"bob's secret, not alice's to archive\n"
    (bob / "private" / "diary.txt").write_bytes(secret)
    os.chmod(bob, 0o700)
    os.utime(bob, ns=(10**18, 10**18))
    alice.mkdir()
    (alice / "notes.txt").write_bytes(b"alice's notes\n")
    os.symlink("/etc", alice / "etc")
    os.symlink(str(bob), alice / "bob")
    os.symlink("../bob/private", alice / "bobs-private")
    os.symlink("/etc/passwd", alice / "passwd")

    watched = {p: _fingerprint(p) for p in (bob, Path("/etc/passwd"))}
    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    snap = backup(repo, alice, user="alice")

    nodes = {n.name: n for n in repo.load_tree(snap.tree)}
    assert {k: (n.type, n.target) for k, n in nodes.items() if n.type == "symlink"} == {
        b"etc": ("symlink", b"/etc"),
        b"bob": ("symlink", str(bob).encode()),
        b"bobs-private": ("symlink", b"../bob/private"),
        b"passwd": ("symlink", b"/etc/passwd"),
    }
    assert repo.blob_id(secret) not in repo.index, "bob's file was archived through a link"
    assert repo.blob_id(Path("/etc/passwd").read_bytes()) not in repo.index

    expected = snapshot_of_tree(alice)
    target = tmp_path / "restored" / "alice"
    restore(repo, snap, target)
    assert_same_tree(expected, snapshot_of_tree(target))
    for name in ("etc", "bob", "bobs-private", "passwd"):
        assert (target / name).is_symlink()
    for p, before in watched.items():
        assert _fingerprint(p) == before, f"{p} was changed by backup or restore"


# --- where restore may write ---------------------------------------------------------------


def _simple_snapshot(world: World) -> str:
    return world.snapshot(world.tree([_file(b"hello.txt", [world.data(b"hello\n")], 6)]))


def _symlinked_parent(world: World) -> tuple[Path, Path]:
    real = world.tmp / "real-parent"
    real.mkdir()
    link = world.tmp / "linked-parent"
    os.symlink(real, link)
    return real, link


def test_existing_target_below_a_symlinked_parent_is_fine(world: World) -> None:
    sid = _simple_snapshot(world)
    real, link = _symlinked_parent(world)
    (real / "home").mkdir()
    restore(world.repo, world.repo.find_snapshot(sid), link / "home")
    assert (real / "home" / "hello.txt").read_bytes() == b"hello\n"
    assert link.is_symlink() and os.listdir(real) == ["home"]


def test_absent_target_below_a_symlinked_parent_is_fine(world: World) -> None:
    """``/home`` is often a symlink (to ``/var/home``, a mounted volume...): restoring a
    new home below it must work like below a real folder."""
    sid = _simple_snapshot(world)
    real, link = _symlinked_parent(world)
    restore(world.repo, world.repo.find_snapshot(sid), link / "home")
    assert (real / "home" / "hello.txt").read_bytes() == b"hello\n"
    assert link.is_symlink() and os.listdir(real) == ["home"]


@pytest.mark.parametrize("trailing_slash", [False, True], ids=["plain", "trailing-slash"])
@pytest.mark.parametrize("pointing_to", ["empty-dir", "outside", "nothing"])
def test_target_that_is_a_symlink_is_refused(
    world: World, pointing_to: str, trailing_slash: bool
) -> None:
    sid = _simple_snapshot(world)
    empty = world.tmp / "empty-dir"
    empty.mkdir()
    dest = {"empty-dir": empty, "outside": world.outside, "nothing": world.tmp / "nothing"}
    link = world.area / "home"
    os.symlink(dest[pointing_to], link)
    world.watch(world.outside, empty)
    target = str(link) + ("/" if trailing_slash else "")
    with pytest.raises(TargetNotEmpty) as info:
        restore(world.repo, world.repo.find_snapshot(sid), target)
    assert "symbolic link" in str(info.value)
    assert link.is_symlink() and os.readlink(link) == str(dest[pointing_to])
    assert os.listdir(world.area) == ["home"]
    assert not os.path.lexists(world.tmp / "nothing")
    world.assert_untouched()
