"""The command line stays light to start: repository verbs and ``fetch-home`` (run in
the init container of every login in per-user-volume mode) must not load the database
stack. Checked in a fresh interpreter, where ``sys.modules`` tells what an import pulled in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "tornado", "jupyterhub", "fastcdc", "click")
"""The database and web stacks, and the chunker (backups only; the ``fastcdc`` package
imports its own command line, ``click``, with it)."""


def test_importing_the_command_line_loads_no_database_or_web_stack() -> None:
    code = (
        "import sys, hometier.cli.main\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"loaded at start-up: {r.stdout.strip()}"


PLAN = ("hometier.cli.plan_cmds", "hometier.cli.replay_cmds", "hometier.lifecycle.plan")
"""``plan``'s scan, replay and report: loaded when ``plan`` runs, not at every start."""
REPOSITORY = ("hometier.repo", "hometier.engine", "hometier.store", "obstore")
"""The repository stack: the verbs that read or write a repository import it; the
parser, and ``fetch-home`` (which only talks to the service), do not."""
ON_USE = ("urllib.request", "http.client", "rich.progress")
"""The HTTP client (the verbs that talk to the service) and progress bars (shown on a
terminal only): about 25 ms of every cold ``hometier restore`` otherwise."""


def test_building_the_parser_loads_no_plan_or_repository_code_and_plan_still_runs(tmp_path) -> None:
    code = (
        "import sys, hometier.cli.main as m\n"
        "m.build_parser()\n"
        f"print(' '.join(x for x in {PLAN + REPOSITORY + ON_USE!r} if x in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"loaded at start-up: {r.stdout.strip()}"
    r = subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", "plan", "--tiers", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "efs-standard" in r.stdout


def test_the_lifecycle_verbs_still_find_their_database_code(tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hometier.cli.main",
            "--homes",
            str(tmp_path / "homes"),
            "--store",
            f"file://{tmp_path / 'repo'}",
            "--db",
            f"sqlite:///{tmp_path / 'state.db'}",
            "status",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "state.db").exists()


def test_a_backup_still_finds_its_chunker(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "big.bin").write_bytes(os.urandom(6_000_000))  # cut in chunks, not one blob
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hometier.cli.main",
            "--store",
            f"file://{tmp_path / 'repo'}",
            "backup",
            "ann",
            "--source",
            str(home),
            "--init",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)["stats"]
    assert stats["files_read"] == 1 and stats["blobs_new"] >= 3, stats  # chunks + tree
