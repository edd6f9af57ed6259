"""The lifecycle verbs of the ``hometier`` command: archive, restore, status, exempt,
lease, serve --once.

In-process through ``hometier.cli.main.main``, configured like an operator would: the
``HOMETIER_*`` variables (a local-folder repository and SQLite in ``tmp_path``) and, for
``serve``, a ``hometier_config.py`` in the working directory.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hometier.cli.main import main
from hometier.lifecycle.activity import NOTICE_NAME

from .conftest import manifest, write_home


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
        return " ".join(self.err.split())


@dataclass
class Cli:
    tmp: Path
    homes: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refusing the command line
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def home(self, user: str) -> Path:
        path = self.homes / user
        write_home(path, user)
        return path

    def state(self, user: str) -> str:
        r = self("status", user, "--json")
        assert r.code == 0, r
        state: str = r.json["state"]
        return state


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    homes = tmp_path / "homes"
    homes.mkdir()
    monkeypatch.chdir(tmp_path)  # no stray hometier_config.py
    monkeypatch.setenv("HOMETIER_HOMES", str(homes))
    monkeypatch.setenv("HOMETIER_STORE", f"file://{tmp_path}/repo")
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{tmp_path}/state.db")
    for name in ("HOMETIER_FAULTS", "JUPYTERHUB_API_URL", "HOMETIER_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # main() installs its own root handler on the (captured) stderr; undo it afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Cli(tmp_path, homes, capsys)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_archive_status_and_restore(cli: Cli) -> None:
    home = cli.home("alice")
    before = manifest(home)

    r = cli("archive", "alice", "--json")

    assert r.code == 0, r
    assert r.json["outcome"] == "archived" and len(r.json["snapshot"]) == 64
    assert sorted(p.name for p in home.iterdir()) == [NOTICE_NAME]
    status = cli("status", "alice", "--json").json
    assert status["state"] == "archived" and status["archived_at"]
    # Nothing on the volume any more: its last size is the quarantine's, until it expires.
    assert status["hot_bytes"] == 0 and status["leases"] == []
    assert status["quarantine_bytes"] > 0
    expires = dt.datetime.fromisoformat(status["quarantine_expires"])
    archived_at = dt.datetime.fromisoformat(status["archived_at"])
    assert expires - archived_at == dt.timedelta(days=3)  # c.Archiver.quarantine_for
    everyone = cli("status", "--json")
    assert [(h["user"], h["state"]) for h in everyone.json] == [("alice", "archived")]
    assert cli("status", "--state", "active", "--json").json == []
    human = cli("status")
    assert human.code == 0 and "alice" in human.out and "archived" in human.out

    r = cli("restore", "alice", "--json")

    assert r.code == 0, r
    assert r.json["outcome"] == "restored" and r.json["source"] == "quarantine"
    assert manifest(home) == before
    assert cli.state("alice") == "active"
    # A second archive of the restored home also works (human output this time).
    r = cli("archive", "alice")
    assert r.code == 0 and "alice: archived" in r.out


def test_exempt_refuses_archive_until_removed(cli: Cli) -> None:
    home = cli.home("bob")
    before = manifest(home)

    r = cli("exempt", "bob", "--reason", "thesis", "--json")
    assert (r.code, r.json) == (0, {"user": "bob", "exempt": True})
    assert cli("status", "bob", "--json").json["exempt"] is True

    r = cli("archive", "bob")
    assert r.code == 4, r
    assert "cannot be archived now: it is exempt" in r.said
    assert manifest(home) == before

    assert cli("exempt", "bob", "--remove").code == 0
    assert cli("archive", "bob").code == 0
    assert cli.state("bob") == "archived"


def test_lease_refuses_archive_until_released(cli: Cli) -> None:
    home = cli.home("carol")
    before = manifest(home)

    r = cli("lease", "carol", "--for", "2h", "--holder", "job1", "--purpose", "nightly", "--json")

    assert r.code == 0, r
    lease = r.json["lease"]
    assert r.json["holder"] == "job1"
    [held] = cli("status", "carol", "--json").json["leases"]
    assert (held["id"], held["holder"], held["purpose"]) == (lease, "job1", "nightly")

    r = cli("archive", "carol", "--json")
    assert r.code == 4, r
    assert r.json["kind"] == "NotEligible" and "1 active lease" in r.json["error"]
    assert manifest(home) == before
    assert cli.state("carol") == "active"

    r = cli("lease", "--renew", lease, "--for", "3h", "--json")
    assert r.code == 0 and r.json["lease"] == lease
    r = cli("lease", "--release", lease, "--json")
    assert (r.code, r.json) == (0, {"lease": lease, "released": True})
    assert cli("lease", "--release", lease, "--json").json["released"] is False
    assert cli("status", "carol", "--json").json["leases"] == []

    assert cli("archive", "carol").code == 0
    assert cli.state("carol") == "archived"
    r = cli("lease", "--renew", lease, "--for", "1h")
    assert r.code == 4 and "was released or has expired" in r.said


def test_serve_once_archives_what_the_policy_chooses(cli: Cli) -> None:
    (cli.tmp / "hometier_config.py").write_text(
        'c.Archiver.inactive_after = "0s"\nc.Archiver.quarantine_for = "1d"\n'
    )
    idle = cli.home("dave")
    kept = cli.home("erin")
    before = manifest(idle)
    assert cli("exempt", "erin").code == 0

    dry = cli("serve", "--once", "--dry-run", "--json")
    assert dry.code == 0, dry
    assert dry.json["results"] == [] and cli.state("dave") == "active"

    r = cli("serve", "--once", "--json")

    assert r.code == 0, r
    report = r.json
    decisions = {d["user"]: d for d in report["decisions"]}
    assert decisions["dave"]["chosen"] is True
    assert (decisions["erin"]["chosen"], decisions["erin"]["reason"]) == (False, "exempt")
    assert [(x["user"], x["outcome"]) for x in report["results"]] == [("dave", "archived")]
    assert report["errors"] == [] and report["purged"] == []
    assert cli.state("dave") == "archived" and cli.state("erin") == "active"
    assert sorted(p.name for p in kept.iterdir()) != [NOTICE_NAME]

    assert cli("restore", "dave").code == 0
    assert manifest(idle) == before


def test_unknown_users_and_bad_names_are_errors(cli: Cli) -> None:
    r = cli("status", "nobody")
    assert r.code == 3 and "No home is known for user nobody" in r.said
    r = cli("status", "nobody", "--json")
    assert r.code == 3 and r.json["kind"] == "HomeNotFound"

    for verb in (("archive",), ("restore",), ("status",), ("exempt",), ("lease",)):
        r = cli(*verb, "../etc")
        assert r.code == 2, (verb, r)
        assert "Invalid user name '../etc'" in r.said

    r = cli("lease", "--release", "no-such-lease")
    assert r.code == 3 and "No lease no-such-lease is known" in r.said
    r = cli("lease")
    assert r.code == 2 and "lease needs a USER" in r.said

    r = cli("restore", "ghost")  # never archived: nothing to restore
    assert r.code == 3, r
    r = cli("archive", "ghost")  # a typo: no such home folder
    assert r.code != 0, r
    assert "ghost" in r.out + r.err
    # The typo must not leave a home behind that every archiver cycle then picks ("no
    # activity ever seen") and fails on, making `serve --once` exit 1 from then on.
    cycle = cli("serve", "--once", "--json")
    known = [h["user"] for h in cli("status", "--json").json]
    assert (cycle.code, cycle.json["errors"], known) == (0, [], []), cycle.json
