"""Verbs that talk to the service, not the repository: ``fetch-home`` (init containers)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
from typing import Any
from urllib.parse import quote

from hometier.cli.output import err
from hometier.config import Hometier
from hometier.errors import Error, UsageError
from hometier.lifecycle.homes import NOTICE_NAME, check_username

POLL = 1.0
NOTHING_TO_RESTORE = frozenset({"HomeNotFound", "SnapshotNotFound", "NothingToRestore"})


class ServiceError(Error):
    """The hometier service at {} answered: {}"""

    exit_code = 8


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fetch-home",
        help="(init container) make sure a user's files are back before their server starts",
    )
    p.add_argument("--user", required=True, help="whose home")
    p.add_argument(
        "--service-url",
        default=os.environ.get("HOMETIER_SERVICE_URL", ""),
        help="the service, with its prefix (http://hometier:8765/services/hometier) "
        "[HOMETIER_SERVICE_URL]",
    )
    p.add_argument(
        "--token-env",
        default="HOMETIER_RESTORE_TOKEN",
        help="environment variable holding the one-spawn token",
    )
    p.add_argument(
        "--unpack-into",
        metavar="DIR",
        help="per-user volume: stream the latest snapshot and unpack it into DIR",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the restore (600)"
    )
    p.set_defaults(handler=cmd_fetch_home)


def _request(method: str, url: str, token: str, timeout: float = 60.0) -> Any:
    import urllib.request  # here: its HTTP and TLS stack would load with every command

    req = urllib.request.Request(
        url,
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - operator-given URL


RETRYABLE = frozenset({502, 503, 504})
RETRY_FOR = 120.0
"""Seconds of failures in a row (no answer, 502/503/504) before giving up: a service
that restarts, or is busy with a class logging in, is waited for; one that is down
fails the init container with its reason."""


def _json(method: str, url: str, token: str, deadline: float | None = None) -> dict[str, Any]:
    """One request; retried on no answer and on 502/503/504 (with backoff, honouring
    ``Retry-After``) for at most ``RETRY_FOR`` seconds in a row and never past
    ``deadline``. A retried ``POST …/restore`` joins the restore in progress."""
    failing_since: float | None = None
    attempt = 0
    while True:
        try:
            return _json_once(method, url, token)
        except _Retryable as exc:
            now = time.monotonic()
            failing_since = failing_since or now
            delay = min(5.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            delay = max(delay, min(exc.retry_after or 0.0, 10.0))
            attempt += 1
            out_of_time = deadline is not None and now + delay > deadline
            if now - failing_since > RETRY_FOR or out_of_time:
                raise ServiceError(url, exc.reason) from None
            err.print(f"the service is not answering ({exc.reason}); trying again", highlight=False)
            time.sleep(delay)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _json_once(method: str, url: str, token: str) -> dict[str, Any]:
    try:
        with _request(method, url, token) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc
    except urllib.error.HTTPError as exc:
        if exc.code in RETRYABLE:
            try:
                after = float(exc.headers.get("Retry-After") or 0) or None
            except ValueError:
                after = None
            raise _Retryable(f"HTTP {exc.code}", after) from None
        try:
            doc = json.load(exc)
            msg, kind = doc.get("error", f"HTTP {exc.code}"), doc.get("kind", "")
        except ValueError:
            msg, kind = f"HTTP {exc.code}", ""
        if exc.code == 404 and kind in NOTHING_TO_RESTORE:
            return {"state": "done", "message": msg, "missing": True}
        # Any other 404 is a wrong URL: never start a server on an archived home.
        raise ServiceError(url, msg) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Retryable(str(getattr(exc, "reason", exc))) from None


def cmd_fetch_home(args: argparse.Namespace, cfg: Hometier) -> int:
    user = check_username(args.user)
    if not args.service_url:
        raise UsageError("--service-url (or HOMETIER_SERVICE_URL) is required")
    token = os.environ.get(args.token_env, "")
    if not token:
        raise UsageError(f"no token in ${args.token_env}")
    base = f"{args.service_url.rstrip('/')}/api/homes/{quote(user, safe='')}"
    if args.unpack_into:
        return _unpack(base, token, args.unpack_into)
    deadline = time.monotonic() + args.timeout
    doc = _json("POST", f"{base}/restore", token, deadline)
    while doc.get("state") == "running":
        err.print(doc.get("message") or "restoring", highlight=False)
        if time.monotonic() > deadline:
            raise ServiceError(base, "the restore did not finish in time")
        time.sleep(POLL)
        doc = _json("GET", f"{base}/restore", token, deadline)
    if doc.get("state") == "failed":
        raise ServiceError(base, doc.get("message") or "the restore failed")
    err.print(doc.get("message") or "files are ready", highlight=False)
    return 0


def _unpack(base: str, token: str, target: str) -> int:
    from hometier.engine.untar import unpack_tar

    names = set(os.listdir(target)) if os.path.isdir(target) else set()
    if names - {NOTICE_NAME, "lost+found"}:
        err.print(f"{target} already holds files: nothing to restore")
        return 0
    url = f"{base}/snapshots/latest/archive?format=tar"
    try:
        resp = _request("GET", url, token, timeout=300)
    except urllib.error.HTTPError as exc:
        try:
            kind = json.load(exc).get("kind", "")
        except ValueError:
            kind = ""
        if exc.code == 404 and kind in NOTHING_TO_RESTORE:
            err.print("no snapshot of this home: nothing to restore")
            return 0
        raise ServiceError(url, f"HTTP {exc.code} {kind}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(url, str(exc)) from None
    notice = os.path.join(target, NOTICE_NAME)
    if os.path.lexists(notice):
        os.unlink(notice)
    with resp:
        stats = unpack_tar(resp, target)
    err.print(f"unpacked {stats.files} files, {stats.bytes} bytes into {target}")
    # The home is hot again: tell the service, so the archiver treats it as active.
    _json("POST", f"{base}/restored", token)
    sys.stdout.flush()
    return 0
