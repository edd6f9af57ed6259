"""The ``env`` fixture of the command-line tests: homes, a ``file://`` repository and
SQLite in ``tmp_path`` (``HOMETIER_*``), and ``env(*argv)`` running ``hometier`` in-process
(exit code, stdout, stderr)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hometier.cli.main import main
from treeutil import snapshot_of_tree


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
        return " ".join((self.out + " " + self.err).split())


@dataclass
class Env:
    tmp: Path
    homes: Path
    store: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refusing the command line
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def home(self, user: str, files: int = 3, size: int = 2000) -> Path:
        path = self.homes / user
        (path / "data").mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (path / "data" / f"f{i}.bin").write_bytes(os.urandom(size))
        (path / "notes.md").write_text(f"notes of {user}\n")
        return path

    def everything(self) -> dict[Any, Any]:
        return snapshot_of_tree(self.tmp, atime=False)


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Env]:
    homes = tmp_path / "homes"
    homes.mkdir()
    store = tmp_path / "repo"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOMETIER_HOMES", str(homes))
    monkeypatch.setenv("HOMETIER_STORE", f"file://{store}")
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{tmp_path}/state.db")
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "HOMETIER_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Env(tmp_path, homes, store, capsys)
    root.handlers[:] = handlers
    root.setLevel(level)
