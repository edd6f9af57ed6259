"""The command line stays light to start: repository verbs and ``fetch-home`` (run in
the init container of every login in per-user-volume mode) must not load the database
stack. Checked in a fresh interpreter, where ``sys.modules`` tells what an import pulled in.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "tornado", "jupyterhub")


def test_importing_the_command_line_loads_no_database_or_web_stack() -> None:
    code = (
        "import sys, hometier.cli.main\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"loaded at start-up: {r.stdout.strip()}"


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
