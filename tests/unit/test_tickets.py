"""Restore tickets (``hometier.tickets``): what a spawn hook hands the service instead of
a Hub token. Each attack a holder of someone else's ticket, or of none, could try."""

from __future__ import annotations

import base64
import json
import time

import pytest

from hometier.scopes import RESTORE
from hometier.service.auth import Identity
from hometier.tickets import is_ticket, mint_ticket, ticket_model, verify_ticket

SECRET = "a" * 64


def _parts(ticket: str) -> tuple[dict, str]:
    body, mac = ticket[len("htr1.") :].split(".")
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))), mac


def _forge(payload: dict, mac: str) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"htr1.{body}.{mac}"


def test_a_ticket_names_its_user_until_it_expires() -> None:
    t = mint_ticket(SECRET, "alice", 900)
    assert is_ticket(t) and not is_ticket("0123abcd")
    assert verify_ticket(SECRET, t) == "alice"
    assert verify_ticket(SECRET, t, now=time.time() + 899) == "alice"
    assert verify_ticket(SECRET, t, now=time.time() + 901) is None
    assert mint_ticket(SECRET, "alice", 900) != t  # a nonce: never twice the same


@pytest.mark.parametrize(
    "attack",
    [
        "other secret",
        "user swapped",
        "expiry extended",
        "mac truncated",
        "no mac",
        "garbage",
        "huge",
        "not json",
        "user with a slash",
        "empty secret",
    ],
)
def test_forged_or_altered_tickets_are_refused(attack: str) -> None:
    t = mint_ticket(SECRET, "alice", 900)
    payload, mac = _parts(t)
    secret = SECRET
    if attack == "other secret":
        secret = "b" * 64
    elif attack == "user swapped":
        t = _forge({**payload, "u": "bob"}, mac)
    elif attack == "expiry extended":
        t = _forge({**payload, "e": payload["e"] + 10**6}, mac)
    elif attack == "mac truncated":
        t = t[:-4]
    elif attack == "no mac":
        t = t.rsplit(".", 1)[0]
    elif attack == "garbage":
        t = "htr1.%%%.###"
    elif attack == "huge":
        t = t + "A" * 5000
    elif attack == "not json":
        import hashlib
        import hmac

        from hometier.tickets import _b64, _key

        body = _b64(b"not json")
        t = f"htr1.{body}.{_b64(hmac.new(_key(SECRET), ('htr1.' + body).encode(), hashlib.sha256).digest())}"
    elif attack == "user with a slash":
        import hashlib
        import hmac

        from hometier.tickets import _b64, _key

        body = _b64(json.dumps({"u": "../bob", "e": int(time.time()) + 60}).encode())
        t = f"htr1.{body}.{_b64(hmac.new(_key(SECRET), ('htr1.' + body).encode(), hashlib.sha256).digest())}"
    elif attack == "empty secret":
        secret = ""
    assert verify_ticket(secret, t) is None


def test_a_ticket_grants_the_restore_of_its_user_and_nothing_else() -> None:
    who = Identity.from_model(ticket_model("alice"), "hometier")
    assert who.scopes == {f"{RESTORE}!user=alice"}
    assert who.may("restore", "alice")
    for action, user in (
        ("restore", "bob"),
        ("read", "alice"),
        ("lease", "alice"),
        ("admin", None),
        ("read", None),
    ):
        assert not who.may(action, user), (action, user)
    assert not who.is_admin


def test_minting_needs_the_secret() -> None:
    with pytest.raises(ValueError):
        mint_ticket("", "alice", 60)
