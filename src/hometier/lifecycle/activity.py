"""Where "in use" comes from: the JupyterHub REST API and the files' own times.

Leases and exemptions live in the state database and are read by the caller.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hometier.engine.fsutil import open_dir
from hometier.errors import Error
from hometier.lifecycle.homes import NOTICE_NAME as NOTICE_NAME  # its former home

log = logging.getLogger(__name__)

PAGE = 200


class HubUnavailable(Error):
    """JupyterHub API at {} could not be read: {}"""

    exit_code = 6
    http_status = 503


@dataclass(frozen=True)
class HubUser:
    """One user as the Hub sees them."""

    name: str
    last_activity: dt.datetime | None
    running: bool
    """Any server (default or named) running, starting or stopping."""
    servers: int


def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class HubClient:
    """A least-privilege reader of ``/hub/api/users``.

    The token needs the scopes ``list:users``, ``read:users:activity`` and
    ``read:servers``. Pagination follows the Hub's ``_pagination.next`` links.
    """

    def __init__(self, api_url: str, token: str, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        url = f"{self.api_url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(
            url,
            headers={
                "Authorization": f"token {self.token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise HubUnavailable(self.api_url, f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise HubUnavailable(self.api_url, str(exc)) from exc

    def users(self) -> list[HubUser]:
        """Every user, with activity and whether any of their servers is up or pending."""
        out: list[HubUser] = []
        offset = 0
        while True:
            doc = self._get(
                "/users", {"offset": offset, "limit": PAGE, "include_stopped_servers": 0}
            )
            items = doc["items"] if isinstance(doc, dict) else doc
            for u in items:
                out.append(_hub_user(u, self.api_url))
            nxt = doc.get("_pagination", {}).get("next") if isinstance(doc, dict) else None
            if not nxt or not items:
                return out
            offset = int(nxt.get("offset", offset + len(items)))

    def user(self, name: str) -> HubUser | None:
        """One user, read now (None if the Hub does not know them)."""
        path = "/users/" + urllib.parse.quote(name, safe="")
        try:
            doc = self._get(path, {"include_stopped_servers": 0})
        except HubUnavailable as exc:
            if "HTTP 404" in exc.get_message():
                return None
            raise
        return _hub_user(doc, self.api_url)


def _hub_user(u: dict[str, Any], where: str) -> HubUser:
    if "servers" not in u:
        # The Hub leaves the key out when the token lacks read:servers: every user would
        # look idle, running servers included. Never guess that.
        raise HubUnavailable(where, "the token lacks the read:servers scope")
    servers = u.get("servers") or {}
    times = [parse_time(u.get("last_activity"))]
    running = bool(u.get("server")) or bool(u.get("pending"))
    for s in servers.values():
        times.append(parse_time(s.get("last_activity")))
        if s.get("ready") or s.get("pending") or s.get("started"):
            running = True
    seen = [t for t in times if t is not None]
    return HubUser(
        name=str(u["name"]),
        last_activity=max(seen) if seen else None,
        running=running,
        servers=len(servers),
    )


@dataclass
class Scan:
    """What a metadata-only walk of a home found."""

    newest: dt.datetime | None
    """Newest mtime/ctime seen (of everything, when ``complete``)."""
    bytes: int = 0
    files: int = 0
    complete: bool = True
    """False when the walk stopped early at a recent change: sizes are then partial."""


def scan_home(path: str | os.PathLike[str], stop_after: dt.datetime | None = None) -> Scan:
    """Newest mtime/ctime and size of a home (not following links, one filesystem).

    The notice file hometier leaves is ignored. Stops as soon as a time newer than
    ``stop_after`` is seen (the home is then active: no need to look further), so an
    active home costs a few ``lstat`` calls and an idle one a walk of metadata only.
    Walks by descriptor (a folder swapped for a symlink is never followed).
    """
    try:
        top_fd = open_dir(os.fsencode(path))
    except OSError:
        return Scan(None)
    top = os.fstat(top_fd)
    limit = int(stop_after.timestamp() * 1e9) if stop_after else None
    names = os.listdir(top_fd)
    newest = 0 if set(names) <= {NOTICE_NAME} else max(top.st_mtime_ns, top.st_ctime_ns)
    scan = Scan(None)
    stack: list[tuple[int, Iterator[tuple[str, os.stat_result]]]] = []
    fd = top_fd
    try:
        while True:
            subdirs: list[tuple[str, os.stat_result]] = []
            try:
                entries = os.listdir(fd)
            except OSError:
                entries = []
            for name in entries:
                if fd == top_fd and name == NOTICE_NAME:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                t = max(st.st_mtime_ns, st.st_ctime_ns)
                if stat.S_ISREG(st.st_mode):
                    scan.files += 1
                    scan.bytes += st.st_size
                if t > newest:
                    newest = t
                    if limit is not None and newest > limit:
                        scan.newest, scan.complete = _ns(newest), False
                        return scan
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    subdirs.append((name, st))
            stack.append((fd, iter(subdirs)))
            fd = -1
            while stack and fd < 0:
                parent, pending = stack[-1]
                nxt = next(pending, None)
                if nxt is None:
                    os.close(parent)
                    stack.pop()
                    continue
                try:
                    fd = open_dir(nxt[0], parent, expect=nxt[1])
                except OSError:
                    fd = -1
            if fd < 0:
                break
    finally:
        for parent, _p in stack:
            os.close(parent)
        if fd >= 0 and all(fd != p for p, _ in stack):
            os.close(fd)
    scan.newest = _ns(newest) if newest else None
    return scan


def _ns(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t / 1e9, tz=dt.UTC)
