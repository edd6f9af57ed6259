"""Who may call what: every endpoint of the API against every kind of caller.

DESIGN.md, "Restore at login": a user's token can restore, browse and download only that
user's own home and snapshots; admin actions need the admin scope; the token the spawn
hook mints is for that one user and that one restore. Each refused call must leave
everything as it was: no restore started, no lease taken, renewed or released, no event
logged, no file touched (``Api.fingerprint``), and must not return the home's content.

Against a real JupyterHub and ``hometier serve`` (``e2e.svc_fixtures.api``): alice's home
is archived, bob's is active with two snapshots, each holds a lease taken by the CLI.
Tests run in file order: the refusals first (alice still archived), then what is allowed,
which changes things.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.svc_fixtures import (
    Api,
    api_fixture,  # noqa: F401 - the `api` fixture
)
from hometier.tickets import mint_ticket

pytestmark = [pytest.mark.hub, pytest.mark.slow]

SPAWN_SCOPES = ["custom:hometier:restore!user=alice"]
"""What ``hometier.hub.tokens.mint_restore_token`` gives the init container."""

LEASE_BODY = {"holder": "intruder", "purpose": "should not exist", "duration": "1h"}

# name -> (method, path template, JSON body); {user}, {snap}, {lease} are filled in.
ENDPOINTS: dict[str, tuple[str, str, Any]] = {
    "home": ("GET", "/api/homes/{user}", None),
    "restore-post": ("POST", "/api/homes/{user}/restore", None),
    "restore-get": ("GET", "/api/homes/{user}/restore", None),
    "restore-events": ("GET", "/api/homes/{user}/restore/events", None),
    "leases-get": ("GET", "/api/homes/{user}/leases", None),
    "leases-post": ("POST", "/api/homes/{user}/leases", LEASE_BODY),
    "lease-put": ("PUT", "/api/homes/{user}/leases/{lease}", {"duration": "7d"}),
    "lease-delete": ("DELETE", "/api/homes/{user}/leases/{lease}", None),
    "snapshots": ("GET", "/api/homes/{user}/snapshots", None),
    "tree": ("GET", "/api/homes/{user}/snapshots/{snap}/tree?path=project", None),
    "file": ("GET", "/api/homes/{user}/snapshots/{snap}/file?path=notes.txt", None),
    "archive-tar": ("GET", "/api/homes/{user}/snapshots/{snap}/archive?format=tar", None),
    "archive-zip": ("GET", "/api/homes/{user}/snapshots/{snap}/archive?format=zip", None),
}
RESTORE_ENDPOINTS = ("restore-post", "restore-get", "restore-events")
READ_ENDPOINTS = tuple(name for name, (method, _, _) in ENDPOINTS.items() if method == "GET")

ADMIN_ENDPOINTS: dict[str, tuple[str, str, Any]] = {
    "homes": ("GET", "/api/homes", None),
    "homes-filtered": ("GET", "/api/homes?state=archived&sort=-user", None),
    "archive-now": ("POST", "/api/homes/{user}/archive", None),
    "exempt-put": ("PUT", "/api/homes/{user}/exempt", {"reason": "intruder"}),
    "exempt-delete": ("DELETE", "/api/homes/{user}/exempt", None),
    "metrics": ("GET", "/metrics", None),
}

# Callers that may do nothing to alice's home, and the statuses that refuse them.
REFUSED: dict[str, tuple[int, ...]] = {
    "bob": (403,),  # another user's full token
    "expired": (401,),
    "revoked": (401,),
    "anonymous": (401,),
    "garbage": (401, 403),
    "plain": (403,),  # a service with no role
    "plain-access": (403,),  # a service with access to hometier, no hometier scope
    "hub-admin": (403,),  # the Hub's admin role is not hometier's admin
}


@pytest.fixture(scope="module")
def tokens(api: Api) -> dict[str, str | None]:
    """Every caller's token: the fixture's, plus the spawn token, an expired one, a
    revoked one (never used before it was revoked), none and garbage."""
    hub = api.svc.hub
    out: dict[str, str | None] = dict(api.tokens)
    out["spawn"] = api.svc.user_token("alice", scopes=SPAWN_SCOPES, expires_in=900)
    out["expired"] = api.svc.user_token("alice", expires_in=1)
    _, doc = hub.request("POST", "/users/alice/tokens", {"note": "revoked before use"})
    hub.request("DELETE", f"/users/alice/tokens/{doc['id']}")
    out["revoked"] = doc["token"]
    out["anonymous"] = None
    out["garbage"] = "not-a-token-" + "0" * 40
    time.sleep(2.1)  # the expired token's 1 s are over
    return out


@pytest.fixture(scope="module")
def refs(api: Api) -> dict[str, dict[str, str]]:
    """Per user: the newest snapshot id and the CLI's lease id."""
    return {
        user: {"snap": api.snapshots(user)[0]["id"], "lease": api.fixture_leases[user]}
        for user in ("alice", "bob")
    }


@pytest.fixture(scope="module")
def before(api: Api) -> dict[str, Any]:
    """The database's view through the CLI before any test of this module ran."""
    return {"status": api.status(), "events": api.events()}


def fill(template: str, user: str, refs: dict[str, dict[str, str]]) -> str:
    mine = refs.get(user, {"snap": "latest", "lease": "no-such-lease"})
    return template.format(user=user, **mine)


def assert_refused(name: str, status: int, body: bytes, expected: tuple[int, ...]) -> None:
    assert status in expected, f"{name}: {status} {body[:300]!r}"
    # The error is JSON, never a piece of the home (a tar, a zip, a file, a listing).
    assert body.lstrip().startswith(b"{"), body[:200]
    assert b"notes of " not in body and b"entries" not in body and b"snapshots" not in body
    assert b'"state"' not in body and b"leases" not in body, body[:300]


def call_refused(
    api: Api,
    endpoints: dict[str, tuple[str, str, Any]],
    name: str,
    token: str | None,
    user: str,
    refs: dict[str, dict[str, str]],
    expected: tuple[int, ...],
) -> None:
    method, template, body = endpoints[name]
    was = api.fingerprint()
    status, body_bytes = api.call(method, fill(template, user, refs), token, body, raw=True)
    assert_refused(name, status, body_bytes, expected)
    assert api.fingerprint() == was, f"{name} refused with {status} but changed something"


# --- refused -------------------------------------------------------------------------


@pytest.mark.parametrize("caller", list(REFUSED))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_callers_without_rights_on_alice_are_refused_and_change_nothing(
    api: Api,
    tokens: dict[str, str | None],
    refs: dict[str, dict[str, str]],
    before: dict[str, Any],
    endpoint: str,
    caller: str,
) -> None:
    call_refused(api, ENDPOINTS, endpoint, tokens[caller], "alice", refs, REFUSED[caller])


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e not in RESTORE_ENDPOINTS])
def test_spawn_token_cannot_read_or_lease_alices_home(
    api: Api,
    tokens: dict[str, str | None],
    refs: dict[str, dict[str, str]],
    before: dict[str, Any],
    endpoint: str,
) -> None:
    """The init container's token restores; it cannot browse, download or lease."""
    call_refused(api, ENDPOINTS, endpoint, tokens["spawn"], "alice", refs, (403,))


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_spawn_token_cannot_touch_another_home(
    api: Api,
    tokens: dict[str, str | None],
    refs: dict[str, dict[str, str]],
    before: dict[str, Any],
    endpoint: str,
) -> None:
    call_refused(api, ENDPOINTS, endpoint, tokens["spawn"], "bob", refs, (403,))


@pytest.mark.parametrize("caller", ["alice", "bob", "spawn", *[c for c in REFUSED if c != "bob"]])
@pytest.mark.parametrize("endpoint", list(ADMIN_ENDPOINTS))
def test_admin_actions_are_refused_to_non_admins(
    api: Api,
    tokens: dict[str, str | None],
    refs: dict[str, dict[str, str]],
    before: dict[str, Any],
    endpoint: str,
    caller: str,
) -> None:
    """Even on their own home, users may not archive now, exempt, list all or scrape."""
    expected = REFUSED.get(caller, (403,))
    call_refused(api, ADMIN_ENDPOINTS, endpoint, tokens[caller], "alice", refs, expected)


# --- allowed to read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "user"), [("alice", "alice"), ("ops", "alice"), ("bob", "bob"), ("ops", "bob")]
)
@pytest.mark.parametrize("endpoint", READ_ENDPOINTS)
def test_own_user_and_admin_may_read(
    api: Api,
    tokens: dict[str, str | None],
    refs: dict[str, dict[str, str]],
    before: dict[str, Any],
    endpoint: str,
    caller: str,
    user: str,
) -> None:
    method, template, _ = ENDPOINTS[endpoint]
    was = api.fingerprint()
    status, body = api.call(method, fill(template, user, refs), tokens[caller], raw=True)
    assert status == 200, (endpoint, caller, user, status, body[:300])
    if endpoint == "file":
        assert body == api.files[user][b"notes.txt"]
    elif endpoint == "archive-tar":
        assert b"ustar" in body[:1024]
    elif endpoint == "archive-zip":
        assert body.startswith(b"PK")
    assert api.fingerprint() == was, f"reading {endpoint} changed something"


def test_nothing_changed_after_the_refusals(api: Api, before: dict[str, Any]) -> None:
    """Through the CLI: every home's state and leases as they were, no new events."""
    assert api.status() == before["status"]
    assert api.events() == before["events"]
    assert api.status("alice")["state"] == "archived"
    assert {le["id"] for le in api.status("alice")["leases"]} == {api.fixture_leases["alice"]}


# --- allowed to change things --------------------------------------------------------


def test_spawn_token_restores_alice(api: Api, tokens: dict[str, str | None]) -> None:
    spawn = tokens["spawn"]
    assert api.home("alice")["state"] == "archived"
    status, doc = api.call("POST", "/api/homes/alice/restore", spawn)
    assert status == 202, doc
    assert doc["user"] == "alice" and doc["state"] in ("running", "done")
    done = api.wait_restore("alice", spawn)
    assert done["state"] == "done", done
    events = api.sse("alice", spawn)
    assert events and events[-1][1]["state"] == "done", events
    assert api.home("alice")["state"] == "active"
    assert api.disk("alice") == api.files["alice"]
    restores = [e for e in api.events("alice") if e[3:5] == ("archived", "restoring")]
    assert [e[5] for e in restores] == ["api:alice"], restores
    # Still nothing else: the spawn token reads nothing even now the home is back.
    status, _ = api.call("GET", "/api/homes/alice", spawn)
    assert status == 403


@pytest.mark.parametrize("caller", ["alice", "ops"])
def test_own_user_and_admin_may_take_renew_and_release_leases(
    api: Api, tokens: dict[str, str | None], caller: str
) -> None:
    token = tokens[caller]
    status, lease = api.call("POST", "/api/homes/alice/leases", token, {"duration": "1h"})
    assert status == 201, lease
    assert lease["holder"] == caller
    lid = lease["id"]
    status, renewed = api.call("PUT", f"/api/homes/alice/leases/{lid}", token, {"duration": "2h"})
    assert status == 200, renewed
    assert renewed["expires_at"] > lease["expires_at"]
    # Another user cannot release it.
    status, _ = api.call("DELETE", f"/api/homes/alice/leases/{lid}", tokens["bob"])
    assert status == 403
    status, listed = api.call("GET", "/api/homes/alice/leases", token)
    assert status == 200 and lid in {le["id"] for le in listed["leases"]}
    status, released = api.call("DELETE", f"/api/homes/alice/leases/{lid}", token)
    assert status == 200 and released == {"id": lid, "released": True}
    row = next(le for le in api.lease_rows("alice") if le["id"] == lid)
    assert row["released_at"] is not None


@pytest.mark.parametrize("caller", ["alice", "ops"])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_lease_of_another_home_is_not_found_through_this_home(
    api: Api, tokens: dict[str, str | None], caller: str, method: str
) -> None:
    """Bob's lease id under alice's path: 404, and bob's lease stays as it was."""
    bob_lease = api.fixture_leases["bob"]
    was = api.lease_rows("bob")
    body = {"duration": "7d"} if method == "PUT" else None
    status, doc = api.call(method, f"/api/homes/alice/leases/{bob_lease}", tokens[caller], body)
    assert status == 404, doc
    assert api.lease_rows("bob") == was


def test_admin_may_do_admin_actions(api: Api, tokens: dict[str, str | None]) -> None:
    ops = tokens["ops"]
    status, listed = api.call("GET", "/api/homes", ops)
    assert status == 200, listed
    assert {h["user"] for h in listed["homes"]} >= {"alice", "bob"}
    status, doc = api.call("PUT", "/api/homes/bob/exempt", ops, {"reason": "thesis"})
    assert status == 200 and doc["exempt"] is True and doc["exempt_reason"] == "thesis", doc
    status, doc = api.call("DELETE", "/api/homes/bob/exempt", ops)
    assert status == 200 and doc["exempt"] is False, doc
    # Allowed, but bob's home holds the CLI's lease: a conflict that says why.
    status, doc = api.call("POST", "/api/homes/bob/archive", ops)
    assert status == 409 and "lease" in doc["error"], doc
    assert api.home("bob")["state"] == "active"
    status, text = api.call("GET", "/metrics", ops, raw=True)
    assert status == 200 and b"hometier_homes{" in text
    # The admin reaches every user's endpoints too.
    status, doc = api.call("POST", "/api/homes/bob/restore", ops)
    assert status == 202, doc
    assert api.wait_restore("bob", ops)["state"] == "done"


# --- tokens the Hub no longer honours ------------------------------------------------

GRACE = 5.0
"""Seconds the service may keep honouring a token the Hub no longer does."""


def status_after_grace(api: Api, path: str, token: str) -> int:
    """GET ``path`` until the service refuses ``token`` or ``GRACE`` is over."""
    deadline = time.monotonic() + GRACE
    while True:
        status, _ = api.call("GET", path, token)
        if status in (401, 403) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_a_token_revoked_after_use_is_refused(api: Api) -> None:
    """Revoking a leaked token must cut it off within seconds. The service asks the Hub
    about a token through ``HubAuth``, which caches the answer ``cache_max_age`` seconds
    (300 by default): a token used once keeps working five minutes after its revocation."""
    hub = api.svc.hub
    _, doc = hub.request("POST", "/users/alice/tokens", {"note": "revoked after use"})
    token = doc["token"]
    assert api.call("GET", "/api/homes/alice", token)[0] == 200
    hub.request("DELETE", f"/users/alice/tokens/{doc['id']}")
    was = api.fingerprint()
    status = status_after_grace(api, "/api/homes/alice", token)
    assert status == 401, f"{GRACE:.0f} s after its revocation a token still reads: {status}"
    status, body = api.call("POST", "/api/homes/alice/leases", token, {"duration": "1h"})
    assert status == 401, f"a revoked token still takes leases: {status} {body}"
    assert api.fingerprint() == was


def test_a_token_that_expired_after_use_is_refused(api: Api) -> None:
    """The spawn hook's token lives 15 minutes; the service must not honour it much
    longer (the same cache)."""
    token = api.svc.user_token("alice", scopes=SPAWN_SCOPES, expires_in=2)
    assert api.call("GET", "/api/homes/alice/restore", token)[0] == 200
    time.sleep(2.5)
    was = api.fingerprint()
    status = status_after_grace(api, "/api/homes/alice/restore", token)
    assert status == 401, f"{GRACE:.0f} s after it expired a token still works: {status}"
    status, body = api.call("POST", "/api/homes/alice/restore", token)
    assert status == 401, f"an expired token still starts restores: {status} {body}"
    assert api.fingerprint() == was


def test_forged_expired_and_foreign_tickets_change_nothing(api: Api) -> None:
    """Restore tickets (``hometier.tickets``, what the spawn hook sends instead of a Hub
    token): only a valid one, for its own user, restores; nothing else changes."""
    before = {"homes": api.home_rows(), "events": len(api.events())}
    secret = api.svc.token
    forged = mint_ticket("not-the-service-token", "alice", 600)
    expired = mint_ticket(secret, "alice", -1)
    bobs = mint_ticket(secret, "bob", 600)
    for token, want in ((forged, (401, 403)), (expired, (401, 403)), (bobs, (403,))):
        for method, path in (
            ("POST", "/api/homes/alice/restore"),
            ("GET", "/api/homes/alice/restore/events"),
            ("GET", "/api/homes/alice/snapshots/latest/archive?format=tar"),
        ):
            status, _ = api.call(method, path, token, raw=True)
            assert status in want, (method, path, status)
    alices = mint_ticket(secret, "alice", 600)
    for method, path in (
        ("GET", "/api/homes/alice/snapshots"),
        ("GET", "/api/homes/alice/leases"),
        ("POST", "/api/homes/alice/archive"),
        ("GET", "/api/homes"),
        ("GET", "/metrics"),
    ):
        status, _ = api.call(method, path, alices, raw=True)
        assert status == 403, (method, path, status)
    assert api.home_rows() == before["homes"]
    assert len(api.events()) == before["events"]


def test_a_ticket_streams_the_latest_snapshot_and_restores_its_user(api: Api) -> None:
    ticket = mint_ticket(api.svc.token, "alice", 600)
    status, headers, body = api.fetch(
        "GET", "/api/homes/alice/snapshots/latest/archive?format=tar", ticket
    )
    assert status == 200 and len(body) > 1000, status
    began = time.monotonic()
    status, doc = api.call("POST", "/api/homes/alice/restore", ticket)
    assert status == 202, doc
    events = api.sse("alice", ticket)
    assert events and events[-1][1]["state"] == "done", events
    print(f"restored through a ticket in {time.monotonic() - began:.1f} s")
    assert api.home("alice")["state"] == "active"
