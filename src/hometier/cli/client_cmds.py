"""Verbs that talk to the service, not the repository: ``fetch-home`` (init containers)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from hometier.cli.output import err
from hometier.config import Hometier
from hometier.errors import Error, UsageError
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.homes import check_username

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
    req = urllib.request.Request(
        url,
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - operator-given URL


def _json(method: str, url: str, token: str) -> dict[str, Any]:
    try:
        with _request(method, url, token) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc
    except urllib.error.HTTPError as exc:
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
        raise ServiceError(url, str(exc)) from None


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
    doc = _json("POST", f"{base}/restore", token)
    while doc.get("state") == "running":
        err.print(doc.get("message") or "restoring", highlight=False)
        if time.monotonic() > deadline:
            raise ServiceError(base, "the restore did not finish in time")
        time.sleep(POLL)
        doc = _json("GET", f"{base}/restore", token)
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
