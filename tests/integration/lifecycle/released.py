"""Archiver processes released at the same instant: each ``hometier serve --once
--json`` waits, after its imports, for a start file; the test writes it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARCHIVER = """
import os, sys, time
from hometier.cli.main import main
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.002)
sys.exit(main(["serve", "--once", "--json"]))
"""


def archivers_at_once(
    workdir: Path, env: dict[str, str], go: Path, count: int = 2
) -> list[dict[str, Any]]:
    """Start ``count`` archivers in ``workdir`` (its ``hometier_config.py``), release
    them together with ``go`` and return their JSON reports; each must exit 0."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ARCHIVER, str(go)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    time.sleep(0.5)  # they are importing; the start file releases them together
    go.write_text("")
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"archiver exited {p.returncode}:\n{out}\n{err}"
    return [json.loads(out) for out, _ in outputs]
