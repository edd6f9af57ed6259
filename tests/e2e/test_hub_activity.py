"""Against a real JupyterHub started by the test (configurable-http-proxy from npm,
DummyAuthenticator, SimpleLocalProcessSpawner), a user with a running server is never
archived and a user idle past the threshold is.

The ``Lifecycle`` reads the Hub through ``HubClient`` with the ``hometier`` service's
least-privilege token. Its clock runs 40 days ahead of the real one, so files written
now and the Hub's real ``last_activity`` times both look 40 days old against
``Policy(inactive_after=30d)``: only a running server keeps a home.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.hub import Clock, Hub
from fixtures.servers import free_port
from hometier.lifecycle.activity import NOTICE_NAME, PAGE, HubClient, HubUnavailable
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.loop import CycleReport, run_cycle
from hometier.state import ACTIVE, ARCHIVED, queries

pytestmark = [pytest.mark.hub, pytest.mark.slow]


def write_files(home: Path) -> None:
    """A few small files and a nested folder."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text(f"notes of {home.name}\n" * 50)
    (home / "data.csv").write_text("a,b\n" + "1,2\n" * 500)
    (home / "project").mkdir(exist_ok=True)
    (home / "project" / "analysis.ipynb").write_text('{"cells": [], "nbformat": 4}\n')


def _files(home: Path) -> set[str]:
    """Relative paths of the files the test wrote (what the single-user server adds, such
    as ``.local/share/jupyter/runtime``, is left out)."""
    return {
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file() and not str(p.relative_to(home)).startswith(".")
    }


def _outcomes(report: CycleReport) -> dict[str, str]:
    return {r.user: r.outcome for r in report.results}


def _decisions(report: CycleReport) -> dict[str, tuple[bool, str]]:
    return {d.user: (d.chosen, d.reason) for d in report.decisions}


def test_running_servers_keep_homes_and_idle_ones_are_archived(
    hub: Hub,
    make_lifecycle: Callable[..., Lifecycle],
    clock: Clock,
) -> None:
    homes = hub.homes
    users = ("alice", "bob", "carol")
    for user in users:
        write_files(homes / user)
    written = {user: _files(homes / user) for user in users}
    hub.create_users(*users)
    try:
        hub.start_server("alice")  # her default server
        hub.start_server("carol", "lab")  # a named server only
        models = {u["name"]: u for u in hub.users()}
        assert set(models["alice"]["servers"]) == {""}
        assert set(models["carol"]["servers"]) == {"lab"}
        assert models["bob"].get("servers", {}) == {}

        lc = make_lifecycle(homes, HubClient(hub.api_url, hub.service_token))
        clock.advance(days=40)

        first = run_cycle(lc)
        assert first.errors == []
        assert _outcomes(first) == {"bob": "archived"}
        decisions = _decisions(first)
        assert decisions["bob"][0] is True
        for user in ("alice", "carol"):
            chosen, reason = decisions[user]
            assert not chosen, f"{user} has a running server but was chosen: {reason}"
            assert "server" in reason and "running" in reason, reason
            assert queries.get_home(lc.db, user).state == ACTIVE
            assert written[user] <= _files(homes / user)
        assert queries.get_home(lc.db, "bob").state == ARCHIVED
        assert os.listdir(homes / "bob") == [NOTICE_NAME]

        # Alice logs off. Her Hub activity is real "now", 40 days before the fake clock:
        # she is idle too, and the next cycle archives her; carol still runs.
        hub.stop_server("alice")
        assert hub.user("alice")["servers"] == {}
        second = run_cycle(lc)
        assert second.errors == []
        assert _outcomes(second) == {"alice": "archived"}
        decisions = _decisions(second)
        assert decisions["carol"][0] is False and "running" in decisions["carol"][1]
        assert decisions["bob"] == (False, "state is archived")
        assert queries.get_home(lc.db, "alice").state == ARCHIVED
        assert os.listdir(homes / "alice") == [NOTICE_NAME]
        assert queries.get_home(lc.db, "carol").state == ACTIVE
        assert written["carol"] <= _files(homes / "carol")
    finally:
        hub.stop_server("alice")
        hub.stop_server("carol", "lab")


def test_token_without_scopes_is_a_clear_error_and_nothing_is_archived(
    hub: Hub,
    make_lifecycle: Callable[..., Lifecycle],
    clock: Clock,
    tmp_path: Path,
) -> None:
    client = HubClient(hub.api_url, hub.extra_tokens["no-scopes"])
    with pytest.raises(HubUnavailable) as caught:
        client.users()
    message = caught.value.get_message()
    assert "HTTP 403" in message and hub.api_url in message, message

    # An unreadable Hub is not "nobody is running": the cycle archives nothing.
    homes = tmp_path / "homes"
    for user in ("dave", "erin"):
        write_files(homes / user)
    lc = make_lifecycle(homes, client)
    clock.advance(days=40)
    report = run_cycle(lc)
    assert report.results == []
    assert report.decisions == []
    assert len(report.errors) == 1 and "HTTP 403" in report.errors[0], report.errors
    for user in ("dave", "erin"):
        assert queries.get_home(lc.db, user).state == ACTIVE
        assert NOTICE_NAME not in os.listdir(homes / user)
        assert (homes / user / "notes.txt").is_file()


def test_wrong_token_and_unreachable_hub_are_errors(hub: Hub) -> None:
    with pytest.raises(HubUnavailable, match="HTTP 403"):
        HubClient(hub.api_url, "not-a-token").users()
    dead = f"http://127.0.0.1:{free_port()}/hub/api"
    with pytest.raises(HubUnavailable, match="could not be read"):
        HubClient(dead, hub.service_token, timeout=5).users()


def test_token_without_read_servers_does_not_hide_running_servers(
    hub: Hub,
    make_lifecycle: Callable[..., Lifecycle],
    clock: Clock,
    tmp_path: Path,
) -> None:
    # With list:users and read:users:activity but not read:servers the Hub answers 200,
    # and its user models simply have no "server"/"servers" keys.
    client = HubClient(hub.api_url, hub.extra_tokens["no-read-servers"])
    hub.start_server("frank")
    try:
        homes = tmp_path / "homes"
        write_files(homes / "frank")
        lc = make_lifecycle(homes, client)
        clock.advance(days=40)
        report = run_cycle(lc)
        assert _outcomes(report) == {}, "frank's server is running, his home was archived"
        assert queries.get_home(lc.db, "frank").state == ACTIVE
        try:
            seen = {u.name: u for u in client.users()}
        except HubUnavailable:
            pass  # refusing to answer is right too
        else:
            assert seen["frank"].running
    finally:
        hub.stop_server("frank")


def test_users_follows_pagination(hub: Hub) -> None:
    names = [f"page-{i:03d}" for i in range(PAGE + 10)]
    # The users stay (deleting 250 takes ~8 s); they have no homes and no servers, so the
    # other tests of the session do not notice them.
    hub.create_users(*names)
    expected = {u["name"] for u in hub.users()}
    assert len(expected) > PAGE
    got = HubClient(hub.api_url, hub.service_token).users()
    got_names = [u.name for u in got]
    assert len(got_names) == len(set(got_names)), "a user was listed twice"
    assert set(got_names) == expected
    assert set(names) <= set(got_names)
    assert all(not u.running and u.servers == 0 for u in got if u.name in names)
