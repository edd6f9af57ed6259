"""A failed restore tells its user why in words, never where: no bucket, endpoint, object
key, server path or credential reaches the API's job document, the home's document, the
spawn page's progress or the dashboard. Every such message carries a short reference;
the service's log has the same reference with the whole detail, and hometier's admin
sees the detail in the API too.

Two failures, provoked through the real service (``test_api_outage.start_world``: a Hub,
``hometier serve`` on PostgreSQL and S3 through the fault proxy):

- the bucket is unreachable (the proxy resets every connection) while alice's archived
  home is restored;
- a pack of dave's archive is damaged in the bucket (64 KiB of it overwritten, as
  ``tests/integration/test_corruption.py`` damages objects); repaired, the restore works.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.servers import S3Server
from hometier.store import open_store
from reliability.faultproxy import Rule
from reliability.test_api_outage import (
    REF,
    FakeSpawner,
    World,
    _cli,
    _make_home,
    _wait_restore,
    purge_quarantine,
    running_world,
)

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("messages"), s3_server) as w:
        yield w


def _user_facing(world: World, texts: list[str]) -> str:
    """All of ``texts``, checked for what must not leak; returns them joined."""
    joined = "\n".join(texts)
    world.assert_clean(joined)
    return joined


def _log_line(world: World, ref: str) -> str:
    lines = [line for line in world.log().splitlines() if f"reference {ref}" in line]
    assert lines, f"no log line carries reference {ref}"
    return "\n".join(lines)


def _failed_restore(world: World, user: str) -> dict[str, Any]:
    got = world.call("POST", f"/api/homes/{user}/restore", user)
    assert got.status == 202, got.text
    done = _wait_restore(world, user)
    assert done["state"] == "failed", done
    return done


def _check_failure(world: World, user: str, why: str, detail: str) -> str:
    """The failed restore as the user and the admin see it; returns its reference."""
    job = _failed_restore(world, user)
    ref = job["reference"]
    print(f"{user}: {job['message']}")
    assert re.fullmatch(r"[0-9a-f]{8}", ref), job
    assert job["message"].startswith(f"Your files could not be restored: {why}."), job
    assert f"(reference {ref})" in job["message"] and job["error"] == job["message"], job
    assert "detail" not in job, job
    home = world.call("GET", f"/api/homes/{user}", user).doc
    assert home["state"] == "failed" and home["reference"] == ref, home
    assert home["error"] == job["message"], home
    page = world.call("GET", "/", user)  # the user's own dashboard page
    assert page.status == 200 and why in page.text, page.text[:2000]
    _user_facing(world, [json.dumps(job), json.dumps(home), page.text])

    # The operator's view: the log line with the reference has the detail.
    line = _log_line(world, ref)
    assert detail in line, line
    # The admin's view: the detail, in the job and in the home.
    as_admin = world.call("GET", f"/api/homes/{user}/restore", "ops").doc
    assert detail in as_admin["detail"] and ref in as_admin["detail"], as_admin
    home_admin = world.call("GET", f"/api/homes/{user}", "ops").doc
    assert detail in home_admin["error"] and ref in home_admin["error"], home_admin
    admin_page = world.call("GET", f"/homes/{user}", "ops")
    assert detail in admin_page.text
    return str(ref)


def _check_spawn(world: World, user: str, why: str, detail: str) -> None:
    """What the spawn page shows when the restore at login fails."""
    spawner = FakeSpawner(world, user)
    took, failed = asyncio.run(spawner.spawn(world.svc.url))
    assert failed is not None and failed.status_code == 503, spawner.messages
    message = failed.log_message or ""
    print(f"{user}: spawn failed after {took:.1f}s: {message}")
    assert message.startswith(f"Your files could not be restored: {why}."), message
    assert "quote the reference" in message
    found = REF.search(message)
    assert found, message
    assert spawner.messages[-1] == message, spawner.messages
    _user_facing(world, [message, *spawner.messages])
    assert detail in _log_line(world, found.group(1))


def test_an_unreachable_bucket_is_named_not_located(world: World) -> None:
    world.proxy.set_rules(Rule("reset"))
    try:
        why = "the archive storage is unreachable"
        ref = _check_failure(world, "alice", why, "did not answer after")
        assert world.store_url in _log_line(world, ref)  # where, for the operator
        _check_spawn(world, "alice", why, "did not answer after")
    finally:
        world.proxy.clear()
    got = world.call("POST", "/api/homes/alice/restore", "alice")
    assert got.status == 202
    assert _wait_restore(world, "alice")["state"] == "done"
    home = world.call("GET", "/api/homes/alice", "alice").doc
    assert home["state"] == "active" and home["error"] is None, home


def test_a_damaged_pack_is_called_damaged_with_a_reference(world: World, tmp_path: Path) -> None:
    svc = world.svc
    store = open_store(world.store_url)  # straight to SeaweedFS, not through the proxy
    before = {o.key for o in store.list("packs/")}
    _make_home(svc.homes / "dave", "dave")
    (svc.homes / "dave" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    _cli(svc, "archive", "dave")
    purge_quarantine(svc, "dave")
    svc.hub.create_users("dave")
    world.tokens["dave"] = svc.user_token("dave")
    packs = sorted((o for o in store.list("packs/") if o.key not in before), key=lambda o: o.size)
    assert packs, "the archive wrote no pack"
    victim = packs[-1].key  # the biggest: dave's file data
    original = store.get(victim)
    mid = len(original) // 2
    store.put(victim, original[:mid] + os.urandom(64 * 1024) + original[mid + 64 * 1024 :])
    try:
        why = "part of the archive is damaged"
        ref = _check_failure(world, "dave", why, "")
        line = _log_line(world, ref)
        print(f"log: {line}")
        assert "dave" in line and ("integrity" in line.lower() or "hash" in line.lower()), line
        _check_spawn(world, "dave", why, "")
    finally:
        store.put(victim, original)
    got = world.call("POST", "/api/homes/dave/restore", "dave")
    assert got.status == 202
    assert _wait_restore(world, "dave")["state"] == "done"
    assert (svc.homes / "dave" / "notes.txt").read_text() == "notes of dave\n" * 50
