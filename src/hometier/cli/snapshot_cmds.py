"""``hometier snapshots``: list a user's snapshots, and look inside them.

- ``snapshots [list] [USER]``: the snapshots, oldest first;
- ``snapshots ls USER [PATH] [--snapshot REF] [--recursive]``: a folder of a snapshot;
- ``snapshots find USER PATTERN [--snapshot REF]``: names matching a shell pattern, in
  every snapshot of the user (or one);
- ``snapshots diff USER A B``: what changed from snapshot A to B.

Restoring one file or folder is ``restore USER --include PATH --target DIR``
(``cli.include``). Everything reads the repository only; nothing is written to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.table import Table

from hometier.cli.output import emit_json, err, human, out
from hometier.config import Hometier
from hometier.lifecycle.homes import check_username

if TYPE_CHECKING:  # imported by the verbs that read a repository (see repo_cmds)
    from hometier.repo import Repository
    from hometier.repo.snapshot import Snapshot
    from hometier.repo.tree import Node

ACTIONS = ("list", "ls", "find", "diff")
_TYPE = {"file": "-", "dir": "d", "symlink": "l", "fifo": "p", "chr": "c", "blk": "b"}
# Global options that take a value: needed to find the verb in argv (``normalize``).
_VALUED = {"--config", "-c", "--homes", "--store", "--db", "--log-level", "--log-format"}


def normalize(argv: list[str]) -> list[str]:
    """``snapshots [USER]`` as ``snapshots list [USER]`` (the form before ls/find/diff
    existed keeps working; a user named like an action is ``snapshots list NAME``)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUED:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg != "snapshots":
            return argv
        rest = [a for a in argv[i + 1 :] if not a.startswith("-")]
        if not rest or rest[0] not in ACTIONS:
            return [*argv[: i + 1], "list", *argv[i + 1 :]]
        return argv
    return argv


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document for scripts",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "snapshots",
        help="list a user's snapshots, or look inside them (ls, find, diff)",
        description="Without an action: list snapshots (the same as `snapshots list`).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="the snapshots of one user or of all, oldest first")
    a.add_argument("user", nargs="?", help="only this user's snapshots")
    a.set_defaults(handler=cmd_list)

    a = actions.add_parser("ls", help="list a folder of a snapshot")
    a.add_argument("user", help="whose snapshot")
    a.add_argument("path", nargs="?", default="", help="folder (or file) inside the home")
    a.add_argument("--snapshot", default="latest", help="snapshot id or prefix (default: latest)")
    a.add_argument("--recursive", "-r", action="store_true", help="list sub-folders too")
    a.set_defaults(handler=cmd_ls)

    a = actions.add_parser("find", help="find files by name in a user's snapshots")
    a.add_argument("user", help="whose snapshots")
    a.add_argument(
        "pattern",
        help="shell pattern (*.ipynb); one with a / is matched against the whole path",
    )
    a.add_argument("--snapshot", help="search this snapshot only (default: every one)")
    a.set_defaults(handler=cmd_find)

    a = actions.add_parser("diff", help="what changed between two snapshots of a user")
    a.add_argument("user", help="whose snapshots")
    a.add_argument("first", help="the older snapshot (id, prefix or latest)")
    a.add_argument("second", help="the newer snapshot (id, prefix or latest)")
    a.set_defaults(handler=cmd_diff)
    for parser in actions.choices.values():
        _json_flag(parser)


def open_repo(cfg: Hometier) -> Repository:
    """The existing repository, opened without creating anything (not even a folder)."""
    from hometier.repo import Repository
    from hometier.store import open_store

    return Repository.open(open_store(cfg.store, create=False))


# --- list ------------------------------------------------------------------------------


def snap_row(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "user": s.user,
        "time": s.time,
        "files": s.stats.files,
        "bytes": s.stats.bytes,
        "stored_bytes": s.stats.bytes_new_stored,
        "parent": s.parent,
        "complete": s.stats.complete,
    }


def _local(t: dt.datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace, cfg: Hometier) -> int:
    if args.user is not None:
        check_username(args.user)
    snaps = open_repo(cfg).list_snapshots(args.user)
    if args.json:
        emit_json([snap_row(s) for s in snaps])
        return 0
    table = Table("id", "user", "time", "files", "size", "stored")
    for s in snaps:
        table.add_row(
            s.id[:12],
            s.user,
            _local(s.time),
            str(s.stats.files),
            human(s.stats.bytes),
            human(s.stats.bytes_new_stored),
        )
    out.print(table)
    return 0


# --- ls --------------------------------------------------------------------------------


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _time(ns: int) -> dt.datetime:
    """Nanoseconds since the epoch as a time, exact to the microsecond (no float)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + dt.timedelta(seconds=seconds, microseconds=rest // 1000)


def node_row(path: bytes, n: Node) -> dict[str, Any]:
    return {
        "path": _name(path),
        "type": n.type,
        "mode": f"{n.mode:04o}",
        "uid": n.uid,
        "gid": n.gid,
        "size": n.size if n.type == "file" else 0,
        "mtime": _time(n.mtime_ns),
        "mtime_ns": n.mtime_ns,
        "target": _name(n.target) if n.target is not None else None,
    }


def _children(
    repo: Repository, n: Node, path: bytes, recursive: bool
) -> Iterator[tuple[bytes, Node]]:
    if n.type != "dir" or n.subtree is None:
        yield path, n
        return
    for child in repo.load_tree(n.subtree):
        rel = path + b"/" + child.name if path else child.name
        yield rel, child
        if recursive and child.type == "dir":
            yield from ((p, c) for p, c in _children(repo, child, rel, True) if p != rel)


def cmd_ls(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.engine.export import find, split_path

    user = check_username(args.user)
    repo = open_repo(cfg)
    snap = repo.find_snapshot(args.snapshot, user)
    node = find(repo, snap, args.path)
    base = b"/".join(split_path(args.path))
    rows = [node_row(p, n) for p, n in _children(repo, node, base, args.recursive)]
    if args.json:
        emit_json({"snapshot": snap.id, "time": snap.time, "entries": rows})
        return 0
    err.print(f"snapshot {snap.id[:12]} of {user}, {_local(snap.time)}", highlight=False)
    for r in rows:
        kind = _TYPE.get(r["type"], "?")
        mode = kind + stat.filemode(int(r["mode"], 8))[1:]
        name = r["path"] + ("/" if r["type"] == "dir" else "")
        if r["target"] is not None:
            name += f" -> {r['target']}"
        out.print(
            f"{mode} {r['uid']:>6} {r['gid']:>6} {r['size']:>12} {_local(r['mtime'])} {name}",
            highlight=False,
            markup=False,
        )
    return 0


# --- find ------------------------------------------------------------------------------


def _matches(
    repo: Repository, tree: bytes, prefix: bytes, pattern: str, cache: dict[bytes, list[Any]]
) -> list[tuple[bytes, Node]]:
    """Matches under one tree, relative to it; a subtree shared by several snapshots (an
    unchanged folder) is searched once."""
    found = cache.get(tree)
    if found is None:
        found = []
        for child in repo.load_tree(tree):  # type: ignore[arg-type]
            name = _name(child.name)
            if fnmatch.fnmatchcase(name, pattern):
                found.append((child.name, child))
            if child.type == "dir" and child.subtree is not None:
                for rel, n in _matches(repo, child.subtree, b"", pattern, cache):
                    found.append((child.name + b"/" + rel, n))
        cache[tree] = found
    return [(prefix + rel, n) for rel, n in found]


def cmd_find(args: argparse.Namespace, cfg: Hometier) -> int:
    user = check_username(args.user)
    repo = open_repo(cfg)
    snaps = (
        [repo.find_snapshot(args.snapshot, user)] if args.snapshot else repo.list_snapshots(user)
    )
    by_path = "/" in args.pattern
    pattern = "*" if by_path else args.pattern
    cache: dict[bytes, list[Any]] = {}
    results: list[dict[str, Any]] = []
    for snap in snaps:
        for rel, n in _matches(repo, snap.tree, b"", pattern, cache):
            if by_path and not fnmatch.fnmatchcase(_name(rel), args.pattern.strip("/")):
                continue
            results.append({"snapshot": snap.id, "time": snap.time, **node_row(rel, n)})
    if args.json:
        emit_json(results)
        return 0
    table = Table("snapshot", "time", "path", "size", "modified")
    for r in results:
        table.add_row(
            r["snapshot"][:12],
            _local(r["time"]),
            r["path"] + ("/" if r["type"] == "dir" else ""),
            human(r["size"]) if r["type"] == "file" else "",
            _local(r["mtime"]),
        )
    out.print(table)
    err.print(f"{len(results)} match(es) in {len(snaps)} snapshot(s)")
    return 0 if results else 3


# --- diff ------------------------------------------------------------------------------


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    """Content (or type) changed."""
    metadata: list[str] = field(default_factory=list)
    """Only mode, owner, times or attributes changed."""
    bytes_added: int = 0
    bytes_removed: int = 0


def _all_under(repo: Repository, n: Node, path: bytes) -> Iterator[tuple[bytes, Node]]:
    yield path, n
    if n.type == "dir" and n.subtree is not None:
        for child in repo.load_tree(n.subtree):
            yield from _all_under(repo, child, path + b"/" + child.name)


def _same_content(a: Node, b: Node) -> bool:
    return (
        a.type == b.type
        and a.size == b.size
        and a.content == b.content
        and a.sparse == b.sparse
        and a.target == b.target
        and a.rdev == b.rdev
    )


def _same_meta(a: Node, b: Node) -> bool:
    return (a.mode, a.uid, a.gid, a.mtime_ns, a.xattrs or {}) == (
        b.mode,
        b.uid,
        b.gid,
        b.mtime_ns,
        b.xattrs or {},
    )


def diff_trees(repo: Repository, a: bytes | None, b: bytes | None, prefix: bytes, d: Diff) -> None:
    """Compare two trees; identical subtrees (same id) are skipped without reading."""
    if a == b:
        return
    left = {n.name: n for n in repo.load_tree(a)} if a is not None else {}  # type: ignore[arg-type]
    right = {n.name: n for n in repo.load_tree(b)} if b is not None else {}  # type: ignore[arg-type]
    for name in sorted(left.keys() | right.keys()):
        path = prefix + b"/" + name if prefix else name
        x, y = left.get(name), right.get(name)
        if y is None:
            assert x is not None
            for p, n in _all_under(repo, x, path):
                d.removed.append(_name(p) + ("/" if n.type == "dir" else ""))
                d.bytes_removed += n.size if n.type == "file" else 0
        elif x is None:
            for p, n in _all_under(repo, y, path):
                d.added.append(_name(p) + ("/" if n.type == "dir" else ""))
                d.bytes_added += n.size if n.type == "file" else 0
        elif x.type == "dir" and y.type == "dir":
            if not _same_meta(x, y):
                d.metadata.append(_name(path) + "/")
            diff_trees(repo, x.subtree, y.subtree, path, d)
        elif not _same_content(x, y):
            d.modified.append(_name(path))
            d.bytes_removed += x.size if x.type == "file" else 0
            d.bytes_added += y.size if y.type == "file" else 0
        elif not _same_meta(x, y):
            d.metadata.append(_name(path))


def cmd_diff(args: argparse.Namespace, cfg: Hometier) -> int:
    user = check_username(args.user)
    repo = open_repo(cfg)
    first = repo.find_snapshot(args.first, user)
    second = repo.find_snapshot(args.second, user)
    d = Diff()
    diff_trees(repo, first.tree, second.tree, b"", d)
    if args.json:
        emit_json({"first": first.id, "second": second.id, **vars(d)})
        return 0
    for mark, names in (("+", d.added), ("-", d.removed), ("M", d.modified), ("U", d.metadata)):
        for name in names:
            out.print(f"{mark}    {name}", highlight=False, markup=False)
    err.print(
        f"{first.id[:12]} → {second.id[:12]}: {len(d.added)} added, {len(d.removed)} "
        f"removed, {len(d.modified)} modified, {len(d.metadata)} with new metadata; "
        f"+{human(d.bytes_added)} -{human(d.bytes_removed)}",
        highlight=False,
    )
    return 0
