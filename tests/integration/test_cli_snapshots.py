"""Looking inside snapshots from the command line, as restic and kopia users expect:
``snapshots ls``, ``snapshots find``, ``snapshots diff``, and ``restore --include`` of
one file or folder into another folder.

Real homes in ``tmp_path``, a ``file://`` repository, the command in-process; the
restored trees are compared entry by entry (type, mode, owner, times, content, links)
with the originals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from integration.cli_env import Env
from treeutil import assert_same_tree, snapshot_of_tree


def _home(env: Env) -> Path:
    home = env.homes / "alice"
    (home / "thesis" / "figures").mkdir(parents=True)
    (home / "thesis" / "main.tex").write_text("\\documentclass{article}\n")
    (home / "thesis" / "figures" / "plot.png").write_bytes(os.urandom(50_000))
    os.link(home / "thesis" / "main.tex", home / "thesis" / "main-hardlink.tex")
    os.symlink("/etc/passwd", home / "thesis" / "outside-link")
    (home / "notes.md").write_text("first\n")
    (home / "big.bin").write_bytes(os.urandom(3_000_000))
    with open(home / "sparse.img", "wb") as f:
        f.truncate(5_000_000)
        f.seek(2_000_000)
        f.write(b"data in the middle")
    os.utime(home / "thesis" / "main.tex", ns=(1, 1_600_000_000_123_456_789))
    return home


def _snapshot(env: Env, *extra: str) -> str:
    r = env("backup", "--init", "alice", *extra, "--json")
    assert r.code == 0, r.said
    sid: str = r.json["snapshot"]
    return sid


def test_ls_lists_a_folder_of_a_snapshot(env: Env) -> None:
    _home(env)
    sid = _snapshot(env)
    r = env("snapshots", "ls", "alice", "thesis", "--json")
    assert r.code == 0, r.said
    doc = r.json
    assert doc["snapshot"] == sid
    names = {e["path"]: e for e in doc["entries"]}
    assert set(names) == {
        "thesis/figures",
        "thesis/main.tex",
        "thesis/main-hardlink.tex",
        "thesis/outside-link",
    }
    assert names["thesis/outside-link"]["target"] == "/etc/passwd"
    assert names["thesis/main.tex"]["mtime"].startswith("2020-09-13T12:26:40.123456")
    r = env("snapshots", "ls", "alice", "-r", "--json")
    assert "thesis/figures/plot.png" in {e["path"] for e in r.json["entries"]}
    r = env("snapshots", "ls", "alice", "thesis")
    assert "outside-link -> /etc/passwd" in r.out
    assert env("snapshots", "ls", "alice", "nope").code == 3
    assert env("snapshots", "ls", "alice", "../..").code == 3
    # The listing of snapshots keeps its old form, and a user named like an action.
    assert [s["id"] for s in env("snapshots", "alice", "--json").json] == [sid]
    assert env("snapshots", "list", "ls", "--json").json == []


def test_find_searches_every_snapshot_of_the_user(env: Env) -> None:
    home = _home(env)
    first = _snapshot(env)
    (home / "thesis" / "chapter2.tex").write_text("more\n")
    second = _snapshot(env)
    r = env("snapshots", "find", "alice", "*.tex", "--json")
    assert r.code == 0, r.said
    found = {(m["snapshot"], m["path"]) for m in r.json}
    assert (first, "thesis/main.tex") in found and (second, "thesis/main.tex") in found
    assert (second, "thesis/chapter2.tex") in found
    assert (first, "thesis/chapter2.tex") not in found
    r = env("snapshots", "find", "alice", "thesis/figures/*", "--snapshot", first, "--json")
    assert [m["path"] for m in r.json] == ["thesis/figures/plot.png"]
    assert env("snapshots", "find", "alice", "*.docx").code == 3


def test_diff_shows_what_changed(env: Env) -> None:
    home = _home(env)
    first = _snapshot(env)
    (home / "notes.md").write_text("second version, longer\n")
    (home / "thesis" / "figures" / "plot.png").unlink()
    (home / "new-folder" / "sub").mkdir(parents=True)
    (home / "new-folder" / "sub" / "x.txt").write_text("x")
    os.chmod(home / "big.bin", 0o600)
    second = _snapshot(env)
    r = env("snapshots", "diff", "alice", first, second, "--json")
    assert r.code == 0, r.said
    d = r.json
    assert d["added"] == ["new-folder/", "new-folder/sub/", "new-folder/sub/x.txt"]
    assert d["removed"] == ["thesis/figures/plot.png"]
    assert d["modified"] == ["notes.md"]
    assert "big.bin" in d["metadata"]
    assert d["bytes_removed"] >= 50_000
    # Identical snapshots: nothing, and the unchanged folders are not even read.
    same = env("snapshots", "diff", "alice", second, "latest", "--json").json
    assert same["added"] == same["removed"] == same["modified"] == same["metadata"] == []
    r = env("snapshots", "diff", "alice", first, second)
    assert "+    new-folder/sub/x.txt" in r.out and "-    thesis/figures/plot.png" in r.out


def _subtree(path: Path) -> dict[Any, Any]:
    return snapshot_of_tree(path, atime=False)


def test_restore_include_brings_back_one_folder_or_one_file(env: Env) -> None:
    home = _home(env)
    original = _subtree(home / "thesis")
    sparse_before = (home / "sparse.img").read_bytes()
    sid = _snapshot(env)
    (home / "thesis" / "main.tex").write_text("edited after the snapshot\n")
    out = env.tmp / "recovered"

    r = env("restore", "alice", "--snapshot", sid[:8], "--include", "thesis", "--target", str(out))
    assert r.code == 0, r.said
    assert_same_tree(original, _subtree(out / "thesis"))
    st = os.lstat(out / "thesis" / "main.tex")
    assert st.st_nlink == 2  # the hardlink inside the folder stays one
    assert os.readlink(out / "thesis" / "outside-link") == "/etc/passwd"  # not followed

    r = env("restore", "alice", "--include", "/sparse.img", "--target", str(out), "--json")
    assert r.code == 0, r.said
    assert r.json["target"] == str(out / "sparse.img")
    assert (out / "sparse.img").read_bytes() == sparse_before
    assert os.stat(out / "sparse.img").st_blocks * 512 < 1_000_000  # still sparse
    assert (home / "thesis" / "main.tex").read_text() == "edited after the snapshot\n"

    # Never over something that exists; a path outside the snapshot is not found.
    before = _subtree(out)
    for argv, code in (
        (["--include", "thesis", "--target", str(out)], 4),
        (["--include", "notes.md", "--target", str(out / "thesis" / "main.tex")], 2),
        (["--include", "../../etc", "--target", str(out)], 3),
        (["--include", "thesis/outside-link/shadow", "--target", str(out)], 3),
        (["--include", "nope", "--target", str(out)], 3),
        (["--include", "thesis"], 2),
    ):
        r = env("restore", "alice", *argv)
        assert r.code == code, (argv, r.said)
        assert "Traceback" not in r.err
    assert_same_tree(before, _subtree(out))
    assert (out / "thesis" / "main.tex").read_text() == "\\documentclass{article}\n"
