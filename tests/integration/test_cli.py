"""The ``hometier`` command end to end: init, backup, snapshots, restore, check.

Most tests call ``hometier.cli.main.main([...])`` in-process (output via capsys); one runs
the real command in a subprocess so that exit codes and stdout/stderr are the ones a
script sees. Homes, the repository (a local folder) and the state database all live in
the test's temporary folder, configured through ``HOMETIER_*`` variables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hometier.cli.main import main
from treeutil import assert_same_tree, snapshot_of_tree

SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def said(self) -> str:
        """stderr with rich's line wrapping undone."""
        return " ".join(self.err.split())


@dataclass
class Env:
    tmp: Path
    homes: Path
    store: Path
    outside: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> Result:
        self.capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refusing the command line
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def home(self, user: str) -> Path:
        return self.homes / user

    def everything(self) -> dict[Any, Any]:
        """Every entry under the test folder (no atimes: reading moves them)."""
        return snapshot_of_tree(self.tmp, atime=False)


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    # main() installs its own root handler on the (captured) stderr; undo it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _make_home(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "notebook.ipynb").write_text('{"cells": []}\n')
    (path / "data").mkdir()
    (path / "data" / "table.csv").write_bytes(b"a,b\n1,2\n" * 1000)
    (path / "data" / "random.bin").write_bytes(os.urandom(300_000))
    (path / "empty-folder").mkdir()
    os.symlink("data/table.csv", path / "link")
    (path / os.fsdecode(b"\xff\xfe-bytes")).write_bytes(b"odd name")
    os.utime(path / "data", ns=(1, 1_600_000_000_123_456_789))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Env:
    homes = tmp_path / "homes"
    homes.mkdir()
    _make_home(homes / "alice")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "root-secret").write_text("must never be touched\n")
    store = tmp_path / "repo"
    monkeypatch.setenv("HOMETIER_HOMES", str(homes))
    monkeypatch.setenv("HOMETIER_STORE", f"file://{store}")
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{tmp_path}/state.db")
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "HOMETIER_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # No hometier_config.py of the developer's may be picked up from the working folder.
    monkeypatch.chdir(tmp_path)
    return Env(tmp_path, homes, store, outside, capsys)


def _files_in(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- init ------------------------------------------------------------------------------


def test_init_creates_a_repository_and_a_second_init_refuses(env: Env) -> None:
    r = env.run("init")
    assert r.code == 0, r.err
    assert "created repository" in r.out
    config = (env.store / "config").read_bytes()
    before = _files_in(env.store)

    r = env.run("init")
    assert r.code != 0, (r.out, r.err)
    assert "error:" in r.err and "already" in r.said
    assert (env.store / "config").read_bytes() == config
    assert _files_in(env.store) == before


def test_init_on_an_existing_repository_says_it_is_one(env: Env) -> None:
    assert env.run("init").code == 0
    r = env.run("init")
    assert r.code != 0
    # It is a hometier repository: saying it holds "no hometier config" would mislead.
    assert "no hometier config" not in r.said, r.said
    assert "hometier repository" in r.said


def test_init_json(env: Env) -> None:
    r = env.run("init", "--json")
    assert r.code == 0
    doc = r.json
    assert doc["created"] is True and doc["url"] == f"file://{env.store}"


# --- backup and snapshots ----------------------------------------------------------------


def test_a_backup_never_creates_a_repository_unless_asked(env: Env) -> None:
    # A mistyped prefix must not become a new, empty repository (nor an empty folder).
    assert not env.store.exists()
    r = env.run("backup", "alice")
    assert r.code == 3, r.err
    assert "hometier init" in r.said and "--init" in r.said, r.said
    assert not env.store.exists()

    r = env.run("backup", "--init", "alice")
    assert r.code == 0, r.err
    assert f"created a new repository at file://{env.store}" in r.said
    assert SNAPSHOT_ID.match(r.out.strip()), r.out
    assert (env.store / "config").is_file()

    r = env.run("backup", "alice")
    assert r.code == 0
    assert "created a new repository" not in r.said


def test_backup_json_prints_the_snapshot_and_snapshots_lists_it(env: Env) -> None:
    r = env.run("backup", "--init", "alice", "--json")
    assert r.code == 0, r.err
    doc = r.json  # stdout is exactly one JSON document
    sid = doc["snapshot"]
    assert SNAPSHOT_ID.match(sid)
    assert doc["user"] == "alice" and doc["parent"] is None
    assert doc["stats"]["files"] == 4 and doc["stats"]["errors"] == []

    r = env.run("--json", "snapshots", "alice")
    assert r.code == 0, r.err
    rows = r.json
    assert [row["id"] for row in rows] == [sid]
    assert rows[0]["user"] == "alice" and rows[0]["complete"] is True

    # A second backup uses the first as parent and reads nothing.
    doc2 = env.run("backup", "--init", "alice", "--json").json
    assert doc2["parent"] == sid and doc2["stats"]["files_read"] == 0
    assert [row["id"] for row in env.run("snapshots", "alice", "--json").json] == [
        sid,
        doc2["snapshot"],
    ]
    # Another user's list is empty, not alice's.
    assert env.run("snapshots", "bob", "--json").json == []


def test_backup_of_a_missing_home_fails_cleanly(env: Env) -> None:
    r = env.run("backup", "--init", "nobody-here")
    assert r.code != 0
    assert "nobody-here" in r.said and "Traceback" not in r.err


# --- restore -------------------------------------------------------------------------------


def test_restore_into_a_target_then_into_the_home(env: Env) -> None:
    home = env.home("alice")
    original = snapshot_of_tree(home)
    sid = env.run("backup", "--init", "alice", "--json").json["snapshot"]

    # Into a new folder.
    target = env.tmp / "restored"
    r = env.run("restore", "alice", "--target", str(target))
    assert r.code == 0, r.err
    assert_same_tree(original, snapshot_of_tree(target))

    # By id prefix, into another one.
    r = env.run("restore", "alice", "--snapshot", sid[:10], "--target", str(env.tmp / "by-id"))
    assert r.code == 0, r.err
    assert_same_tree(original, snapshot_of_tree(env.tmp / "by-id"))

    # Into the home while it still holds files: it is active, nothing to do, no error.
    (home / "new since the backup").write_text("keep me\n")
    before = snapshot_of_tree(home)
    r = env.run("restore", "alice")
    assert r.code == 0, r.err
    assert "already active" in " ".join(r.out.split()) and "error" not in r.err
    assert_same_tree(before, snapshot_of_tree(home))
    assert env.run("restore", "alice", "--json").json["outcome"] == "active"

    # Into the emptied home: works.
    for entry in home.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    r = env.run("restore", "alice")
    assert r.code == 0, r.err
    assert_same_tree(original, snapshot_of_tree(home))


def test_a_state_db_in_a_missing_folder_is_created(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env.run("backup", "--init", "alice").code == 0
    shutil.rmtree(env.home("alice"))
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{env.tmp}/no/such/folder/state.db")
    r = env.run("restore", "alice")
    assert r.code == 0, r.err
    assert (env.tmp / "no/such/folder/state.db").is_file()
    assert env.home("alice").is_dir()


def test_a_state_db_that_cannot_be_opened_is_a_clear_error(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env.run("backup", "--init", "alice").code == 0
    shutil.rmtree(env.home("alice"))
    (env.tmp / "a-file").write_text("not a folder")
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{env.tmp}/a-file/state.db")
    try:
        r = env.run("restore", "alice")
    except Exception as exc:  # noqa: BLE001 - it must not escape main()
        pytest.fail(f"main() raised {type(exc).__name__} instead of reporting an error: {exc}")
    assert r.code == 6 and "state database" in r.err
    assert not env.home("alice").exists()


def test_restore_of_a_user_without_snapshots_is_not_found(env: Env) -> None:
    assert env.run("init").code == 0
    r = env.run("restore", "bob", "--target", str(env.tmp / "bob"))
    assert r.code == 3, r.err
    assert not (env.tmp / "bob").exists()


# --- check ---------------------------------------------------------------------------------


def test_check_read_data_json(env: Env) -> None:
    assert env.run("backup", "--init", "alice").code == 0
    r = env.run("check", "--read-data", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["ok"] is True and doc["errors"] == []
    assert doc["snapshots"] == 1 and doc["packs"] >= 1
    assert doc["packs_read"] == doc["packs"] and doc["bytes_read"] > 0


def test_check_reports_a_damaged_pack(env: Env) -> None:
    assert env.run("backup", "--init", "alice").code == 0
    packs = [p for p in (env.store / "packs").rglob("*") if p.is_file()]
    data = bytearray(packs[0].read_bytes())
    data[100] ^= 0xFF
    packs[0].write_bytes(bytes(data))
    r = env.run("check", "--read-data", "--json")
    assert r.code == 5, r.out
    assert "problem" in r.json["error"]


# --- refusals ------------------------------------------------------------------------------


def test_a_location_holding_other_files_is_refused(env: Env) -> None:
    env.store.mkdir()
    (env.store / "holiday.jpg").write_bytes(b"\xff\xd8 not a repository")
    (env.store / "docs").mkdir()
    (env.store / "docs" / "cv.pdf").write_bytes(b"%PDF")
    before = env.everything()
    for argv in (["init"], ["backup", "alice"], ["backup", "alice", "--json"]):
        r = env.run(*argv)
        assert r.code == 2, (argv, r.out, r.err)
        assert "refusing" in r.said
    assert_same_tree(before, env.everything())


HOSTILE = ["..", "../root", "a/b", "", "x" * 300, "a\0b", ".", "../outside", "/etc", ".hidden"]


@pytest.mark.parametrize("user", HOSTILE, ids=lambda u: repr(u)[:20])
@pytest.mark.parametrize(
    "verb",
    [
        ["backup", "{u}"],
        ["backup", "{u}", "--json"],
        ["restore", "{u}"],
        ["restore", "{u}", "--target", "{tmp}/t"],
        ["snapshots", "{u}"],
    ],
    ids=lambda v: " ".join(v[:1] + v[2:3]),
)
def test_hostile_user_names_are_refused(env: Env, user: str, verb: list[str]) -> None:
    assert env.run("backup", "--init", "alice").code == 0
    before = env.everything()
    argv = [a.replace("{u}", user).replace("{tmp}", str(env.tmp)) for a in verb]
    r = env.run(*argv)
    assert r.code == 2, (argv, r.out, r.err)
    assert "Invalid user name" in r.said, r.said
    assert_same_tree(before, env.everything())


@pytest.mark.parametrize("argv", [["init"], ["backup", "alice"], ["snapshots"], ["check"]])
def test_unknown_store_scheme_is_a_clear_usage_error(env: Env, argv: list[str]) -> None:
    r = env.run("--store", "ftp://example.org/repo", *argv)
    assert r.code == 2, (r.out, r.err)
    assert "unknown repository URL 'ftp://example.org/repo'" in r.said
    assert "file://" in r.said and "s3://" in r.said  # it says what would work
    assert "Traceback" not in r.err

    r = env.run("--store", "ftp://example.org/repo", "--json", *argv)
    assert r.code == 2
    assert r.json["kind"] == "UsageError"


# --- the real command --------------------------------------------------------------------


def test_the_command_in_a_subprocess(env: Env, tmp_path: Path) -> None:
    environ = dict(os.environ)
    environ.pop("CI", None)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hometier.cli.main", *argv],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    p = run("backup", "--init", "alice", "--json")
    assert p.returncode == 0, p.stderr
    sid = json.loads(p.stdout)["snapshot"]
    assert SNAPSHOT_ID.match(sid)

    p = run("snapshots", "alice", "--json")
    assert p.returncode == 0, p.stderr
    assert [row["id"] for row in json.loads(p.stdout)] == [sid]

    home = snapshot_of_tree(env.home("alice"))
    p = run("restore", "alice")  # the home is not empty: already active
    assert p.returncode == 0 and "already active" in p.stdout, p.stderr
    assert "Traceback" not in p.stderr
    assert_same_tree(home, snapshot_of_tree(env.home("alice")))

    p = run("--store", "bogus://x", "backup", "../root")
    assert p.returncode == 2 and "Invalid user name" in p.stderr
