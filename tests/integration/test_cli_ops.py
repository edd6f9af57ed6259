"""The command line as an operator meets it on a bad day: mistyped URLs, names, flags and
folders; a database pointed at the wrong homes or bucket; a bucket that is down; scripts
that parse ``--json``; a terminal that wants progress.

In-process through ``hometier.cli.main.main`` (homes, a ``file://`` repository and SQLite
in ``tmp_path``, configured by ``HOMETIER_*``), plus the real command in a subprocess
where the exit code and the absence of a traceback are the point.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import hometier
from hometier.cli import output
from hometier.cli.main import EXIT_CODES, build_parser
from hometier.errors import Error
from integration.cli_env import Env
from treeutil import assert_same_tree

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")
LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


def subprocess_cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", *argv],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- bad URLs: one line, nothing created ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3:/bucket/x", "expected s3://BUCKET/PREFIX"),
        ("s3://", "expected s3://BUCKET/PREFIX"),
        ("gs:/bucket", "expected gs://BUCKET/PREFIX"),
        ("az://container/x", "AZURE_STORAGE_ACCOUNT_NAME"),
        ("file:/x", "expected file://PATH"),
    ],
)
def test_a_bad_store_url_is_one_line_in_the_real_command(
    tmp_path: Path, url: str, words: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "HOMETIER_"))}
    for verb in (["snapshots"], ["check"], ["backup", "--init", "alice"]):
        p = subprocess_cli("--store", url, *verb, cwd=tmp_path, env=environ)
        assert p.returncode == 2, (verb, p.stderr)
        assert "Traceback" not in p.stderr and "Debug source" not in p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) <= 2, p.stderr  # one sentence (rich may wrap it once)
        assert words in " ".join(p.stderr.split()), p.stderr
    assert sorted(os.listdir(tmp_path)) == []  # no folder, no database


def test_a_mistyped_folder_in_a_read_only_verb_creates_nothing(env: Env) -> None:
    env.home("alice")
    assert env("backup", "--init", "alice").code == 0

    def everything() -> dict[Any, Any]:
        # The database is written by the verbs that get that far (WAL, bindings): what
        # matters is that no folder or object appears anywhere else.
        tree = env.everything()
        return {
            k: v
            for k, v in tree.items()
            if not (isinstance(k, bytes) and (not k or k.startswith(b"state.db")))
        }

    before = everything()
    typo = f"file://{env.tmp}/rpeo"
    for argv in (
        ["snapshots"],
        ["snapshots", "ls", "alice"],
        ["check", "--read-data"],
        ["restore", "alice", "--target", str(env.tmp / "out")],
        ["prune", "--dry-run"],
        ["backup", "alice"],
    ):
        r = env("--store", typo, *argv)
        assert r.code in (3, 4), (argv, r.said)
        assert "Traceback" not in r.err
        assert not (env.tmp / "rpeo").exists(), argv
    assert_same_tree(before, everything())


# --- names that do not exist ---------------------------------------------------------------


def test_exempt_and_lease_of_nobody_fail_and_leave_no_phantom(env: Env) -> None:
    env.home("alice")
    for argv in (["exempt", "nosuch"], ["lease", "nosuch", "--for", "2h"]):
        r = env(*argv)
        assert r.code == 3, (argv, r.said)
        assert "nosuch" in r.said and "typo" in r.said
    assert [row["user"] for row in env("status", "--json").json] == []
    # A home whose folder exists is registered on the way (the loop would do the same).
    assert env("exempt", "alice", "--reason", "thesis").code == 0
    (row,) = env("status", "--json").json
    assert row["user"] == "alice" and row["exempt"] and row["exempt_reason"] == "thesis"


def test_status_of_a_bogus_state_is_a_usage_error(env: Env) -> None:
    r = env("status", "--state", "bogus")
    assert r.code == 2 and "invalid choice" in r.said
    assert env("status", "--state", "archived", "--json").json == []


def test_status_states_are_the_database_states() -> None:
    from hometier.cli.home_cmds import HOME_STATES
    from hometier.state import HOME_STATES as MODEL_STATES

    assert HOME_STATES == MODEL_STATES


def test_a_lease_duration_needs_a_unit(env: Env) -> None:
    env.home("alice")
    for bad in ("2", "2.5", "0s", "-1h", "soon"):
        r = env("lease", "alice", "--for", bad)
        assert r.code == 2, (bad, r.said)
    assert env("status", "--json").json == []  # refused before anything was registered
    r = env("lease", "alice", "--for", "2h", "--holder", "job-7", "--json")
    assert r.code == 0, r.said
    doc = r.json
    assert doc["seconds"] == 7200 and ISO.match(doc["expires_at"]), doc
    expires = dt.datetime.fromisoformat(doc["expires_at"])
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=59) < left <= dt.timedelta(hours=2)


# --- one database, one homes root, one repository ------------------------------------------


def test_a_database_refuses_another_homes_root_until_rebound(env: Env) -> None:
    env.home("alice")
    assert env("status").code == 0  # binds the database to env.homes
    other = env.tmp / "other-homes"
    (other / "mallory").mkdir(parents=True)
    for argv in (["status"], ["serve", "--once"], ["archive", "mallory"], ["exempt", "mallory"]):
        r = env("--homes", str(other), *argv)
        assert r.code == 4, (argv, r.said)
        assert str(env.homes) in r.said and "--rebind" in r.said
    # Nothing of the other root was registered or archived.
    assert [row["user"] for row in env("status", "--json").json] == []
    assert (other / "mallory").is_dir()
    # The homes really moved: rebind once, then the new root is the database's.
    assert env("--homes", str(other), "--rebind", "status").code == 0
    assert env("--homes", str(other), "status").code == 0
    assert env("status").code == 4


def test_a_database_never_creates_a_second_repository(env: Env) -> None:
    env.home("alice")
    r = env("archive", "alice", "--json")  # a new database: creates and binds the repository
    assert r.code == 0, r.said
    typo = env.tmp / "repo-typo"
    for argv in (["archive", "alice"], ["serve", "--once"], ["restore", "alice"]):
        r = env("--store", f"file://{typo}", *argv)
        assert r.code == 4, (argv, r.said)
        assert "holds no repository" in r.said and "--rebind" in r.said
        assert not typo.exists()
    # Another repository that exists is refused too.
    assert env("--store", f"file://{typo}", "init").code == 0
    r = env("--store", f"file://{typo}", "serve", "--once")
    assert r.code == 4 and "holds repository" in r.said, r.said
    # The right one still works.
    assert env("restore", "alice").code == 0


# --- serve --once --dry-run, traitlets flags ----------------------------------------------


def test_a_dry_run_says_would_archive_on_stdout_after_a_short_idle_time(env: Env) -> None:
    env.home("alice")
    time.sleep(1.2)  # activity is the newest mtime *or ctime*: it cannot be faked
    r = env("serve", "--once", "--dry-run", "--Archiver.inactive_after=1s")
    assert r.code == 0, r.said
    assert re.search(r"^would archive alice: .*\(idle \d+s\)", r.out, re.M), r.out
    assert "archive" not in r.err
    assert (env.homes / "alice" / "notes.md").exists()
    # Without the flag (30 days) the same home is kept.
    r = env("serve", "--once", "--dry-run")
    assert r.out.startswith("would keep alice:"), r.out
    # The space-separated form, after the verb, works the same.
    r = env("serve", "--once", "--dry-run", "--Archiver.inactive_after", "1s")
    assert r.out.startswith("would archive alice"), r.out


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("--Archivr.inactive_after=2m", "unknown configuration section"),
        ("--Archiver.inactive_aftr=2m", "unknown option --Archiver.inactive_aftr"),
        ("--Archiver.max_per_cycle=many", "--Archiver.max_per_cycle=many"),
        ("--Archiver.inactive_after=soon", "not a duration"),
    ],
)
def test_bad_trait_flags_are_usage_errors(env: Env, flag: str, words: str) -> None:
    env.home("alice")
    r = env("serve", "--once", "--dry-run", flag)
    assert r.code == 2, r.said
    assert words in r.said and "Traceback" not in r.err


def test_trait_flags_win_over_the_config_file(env: Env) -> None:
    env.home("alice")
    (env.tmp / "hometier_config.py").write_text('c.Archiver.inactive_after = "30d"\n')
    time.sleep(1.1)
    assert env("serve", "--once", "--dry-run").out.startswith("would keep")
    assert env("--Archiver.inactive_after=1s", "serve", "--once", "--dry-run").out.startswith(
        "would archive"
    )


# --- JSON: one time format, seconds, exit codes ---------------------------------------------


def _strings(doc: Any) -> Iterator[tuple[str, str]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, str):
                yield k, v
            else:
                yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def test_every_verb_writes_times_as_iso_8601_with_an_offset(env: Env) -> None:
    env.home("alice")
    env.home("bob")
    docs = [
        env("archive", "alice", "--json"),
        env("backup", "bob", "--json"),
        env("snapshots", "--json"),
        env("snapshots", "ls", "bob", "--json"),
        env("snapshots", "find", "bob", "*.md", "--json"),
        env("lease", "bob", "--for", "30m", "--json"),
        env("status", "--json"),
        env("status", "alice", "--json"),
        env("serve", "--once", "--dry-run", "--json"),
        env("prune", "--dry-run", "--json"),
        env("check", "--json"),
    ]
    seen = 0
    for r in docs:
        assert r.code == 0, r.said
        for key, value in _strings(r.json):
            if LOOKS_LIKE_TIME.match(value):
                assert ISO.match(value), (key, value)
                seen += 1
    assert seen >= 10
    cycle = env("serve", "--once", "--dry-run", "--json").json
    assert isinstance(cycle["seconds"], float)
    assert all(isinstance(d["idle_for"], float | None) for d in cycle["decisions"])


def test_every_error_exit_code_is_documented() -> None:
    for mod in pkgutil.walk_packages(hometier.__path__, "hometier."):
        importlib.import_module(mod.name)
    found: dict[int, list[str]] = {}
    stack: list[type[Error]] = [Error]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.exit_code, []).append(cls.__name__)
        stack.extend(cls.__subclasses__())
    undocumented = {code: names for code, names in found.items() if code not in EXIT_CODES}
    assert not undocumented, undocumented


def test_errors_in_json_mode_carry_their_exit_code(env: Env) -> None:
    r = env("status", "nosuch", "--json")
    assert r.code == 3
    assert r.json == {
        "error": "Home of nosuch not found.",
        "kind": "HomeNotFound",
        "exit_code": 3,
    } or (r.json["kind"] == "HomeNotFound" and r.json["exit_code"] == 3)


def test_an_unexpected_exception_is_one_line(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from hometier.cli import home_cmds

    def boom(*_: Any) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(home_cmds, "cmd_status", boom)
    r = env("status")
    assert r.code == 1
    assert "unexpected RuntimeError: disk on fire" in r.err and "second line" not in r.err
    assert "Traceback" not in r.err


# --- status without the bucket -------------------------------------------------------------


def test_status_reads_only_the_database(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.home("alice")
    assert env("archive", "alice").code == 0
    # The bucket is down (nothing listens there) and the folder URL is gone: status works.
    monkeypatch.setenv("HOMETIER_STORE", "s3://bucket/hometier")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    began = time.monotonic()
    r = env("status")
    assert r.code == 0, r.said
    assert time.monotonic() - began < 5
    assert "alice" in r.out and "archived" in r.out
    # Not "2.0 KB" on the volume: the files are in the quarantine, until a given time.
    assert "quarantine" in r.said and "until" in r.said, r.said
    row = env("status", "alice", "--json").json
    assert row["hot_bytes"] == 0 and row["quarantine_bytes"] > 0


# --- progress on a terminal -----------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=True, width=160))
    return buf


def test_long_verbs_show_percent_and_eta_on_a_terminal(env: Env, terminal: io.StringIO) -> None:
    env.home("alice", files=20, size=200_000)
    env.home("bob", files=20, size=200_000)
    for argv in (
        ["archive", "alice"],
        ["backup", "--init", "bob"],
        ["check", "--read-data"],
        ["restore", "alice"],
        ["restore", "bob", "--target", str(env.tmp / "bob-copy")],
    ):
        terminal.seek(0)
        terminal.truncate()
        r = env(*argv)
        assert r.code == 0, (argv, r.said)
        shown = terminal.getvalue()
        assert "100%" in shown and "ETA" in shown, (argv, shown[-400:])
    # A script (not a terminal, or --json) gets no bar at all.
    terminal.seek(0)
    terminal.truncate()
    assert env("check", "--read-data", "--json").code == 0
    assert terminal.getvalue() == ""


# --- help -----------------------------------------------------------------------------------


def _parsers(p: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, Any]]:
    yield name, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, parser in action.choices.items():
                yield from _parsers(parser, f"{name} {sub}")


def test_every_argument_has_help() -> None:
    missing = []
    for name, parser in _parsers(build_parser(), "hometier"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {action.dest}")
    assert not missing, missing


def test_help_lists_the_exit_codes() -> None:
    text = build_parser().format_help()
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", text, re.M), code
    assert "--Archiver.inactive_after=2m" in text


# --- the database lost: repair state ---------------------------------------------------------


def test_repair_state_rebuilds_a_lost_database_from_the_bucket_and_the_volume(env: Env) -> None:
    import shutil

    for user in ("alice", "bob", "carol"):
        env.home(user)
    assert env("archive", "alice").code == 0
    assert env("archive", "bob").code == 0
    assert env("backup", "carol").code == 0  # a snapshot, and the home stays active
    quarantine = env.homes / ".hometier-quarantine"
    (alices,) = [q for q in quarantine.iterdir() if q.name.startswith("alice.")]
    shutil.rmtree(alices)  # purged: alice's files are only in the bucket now
    for name in os.listdir(env.tmp):
        if name.startswith("state.db"):
            os.unlink(env.tmp / name)  # the database is lost, with no backup

    r = env("repair", "state", "--dry-run", "--json")
    assert r.code == 0, r.said
    assert sorted(r.json["archived"]) == ["alice", "bob"]
    assert env("status", "--json").json == []  # the dry run changed nothing

    r = env("repair", "state")
    assert r.code == 0, r.said
    rows = {h["user"]: h for h in env("status", "--json").json}
    assert {u: rows[u]["state"] for u in rows} == {
        "alice": "archived",
        "bob": "archived",
        "carol": "active",
    }
    assert rows["bob"]["quarantine_expires"] and not rows["alice"]["quarantine_expires"]
    again = env("repair", "state", "--json").json  # idempotent
    assert again["archived"] == [] and again["registered"] == []
    assert again["snapshots_recorded"] == 0

    # Logins (restores) bring every file back: alice's from the bucket, bob's at once.
    for user in ("alice", "bob"):
        r = env("restore", user, "--json")
        assert r.code == 0, r.said
        assert r.json["outcome"] == "restored", r.json
    assert (env.homes / "alice" / "notes.md").read_text() == "notes of alice\n"
    assert (env.homes / "bob" / "notes.md").read_text() == "notes of bob\n"
    assert env("status", "alice", "--json").json["state"] == "active"


def test_a_plain_restore_replaces_the_notice_of_an_unknown_home(env: Env) -> None:
    env.home("dave")
    assert env("archive", "dave").code == 0
    for name in os.listdir(env.tmp):
        if name.startswith("state.db"):
            os.unlink(env.tmp / name)
    # Without repair: the home is unknown and holds only the notice; restore brings it back.
    r = env("restore", "dave")
    assert r.code == 0, r.said
    assert (env.homes / "dave" / "notes.md").read_text() == "notes of dave\n"
    assert not (env.homes / "dave" / "ARCHIVED-BY-HOMETIER.txt").exists()
