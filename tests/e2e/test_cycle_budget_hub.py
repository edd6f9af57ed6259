"""Against a real JupyterHub: a home whose owner has a running server is never walked by
the archiver cycle (the Hub's answer is enough to refuse it), and the idle ones are walked
one cycle's budget at a time.

Walks are counted by wrapping ``scan_home`` where the loop calls it (the real walk runs).
The homes the ``Lifecycle`` reads are under ``tmp_path`` (the Hub's own homes folder is
shared by the suite's tests); the Hub is asked only who runs a server and when.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.hub import Clock, Hub
from hometier.lifecycle import loop
from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.policy import Policy

pytestmark = [pytest.mark.hub, pytest.mark.slow]


def test_a_running_server_is_never_walked(
    hub: Hub,
    make_lifecycle: Callable[..., Lifecycle],
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    homes = tmp_path / "homes"
    users = ("rita", "ivy", "ian")
    for user in users:
        (homes / user / "work").mkdir(parents=True)
        (homes / user / "work" / "notes.md").write_text(f"notes of {user}\n")
    walks: list[str] = []
    real = loop.scan_home

    def counting(path: str | os.PathLike[str], *a: object, **kw: object) -> object:
        walks.append(os.path.basename(path))
        return real(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "scan_home", counting)
    hub.create_users(*users)
    try:
        hub.start_server("rita")
        lc = make_lifecycle(homes, HubClient(hub.api_url, hub.service_token))
        lc.policy = Policy(inactive_after=lc.policy.inactive_after, max_per_cycle=1)
        clock.advance(days=40)

        first = loop.run_cycle(lc)
        second = loop.run_cycle(lc)
        third = loop.run_cycle(lc)
    finally:
        hub.stop_server("rita")
        # The Hub and its homes folder are the suite's: leave neither these users nor a
        # home their servers made there (a later test's cycle would archive it).
        for user in users:
            hub.delete_user(user)
            shutil.rmtree(hub.homes / user, ignore_errors=True)

    print(f"walks over three cycles: {walks}")
    assert first.errors == second.errors == third.errors == []
    done = [[r.user for r in c.results if r.outcome == "archived"] for c in (first, second, third)]
    assert sorted(done[0] + done[1]) == ["ian", "ivy"] and done[2] == [], done
    assert len(done[0]) == len(done[1]) == 1
    assert "rita" not in walks and sorted(walks) == ["ian", "ivy"], walks
    reason = {d.user: d.reason for d in third.decisions}["rita"]
    assert reason == "a server is running", reason
