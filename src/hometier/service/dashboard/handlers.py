"""The dashboard's pages (see the package docstring); actions are in ``actions``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
from typing import Any

from tornado import web

from hometier.engine.export import list_dir
from hometier.errors import Error, UsageError
from hometier.lifecycle.restoring import recorded_failure
from hometier.service.dashboard.actions import HomeAction
from hometier.service.dashboard.admin import AdminPage
from hometier.service.dashboard.base import (
    NotAUser,
    PageHandler,
    StaticHandler,
    path_query,
)
from hometier.service.dashboard.explain import event_detail, explain
from hometier.service.outages import stand_in
from hometier.state import listing, queries

NOTIFIED = [
    (
        "Please tell your hub's administrators and quote the reference",
        "Your hub's administrators have been told",
    ),
    (
        "if it keeps failing, tell your hub's administrators and quote the reference",
        "your hub's administrators have been told",
    ),
]
"""With an admin channel configured (``hometier.notify``), the user's page says so."""

STATE_TEXT = {
    "active": "The files are on the volume.",
    "archiving": "The files are being archived; a login now cancels it.",
    "archived": "The files are archived in object storage. They come back when the server "
    "starts, or now with Restore.",
    "restoring": "The files are being restored.",
    "failed": "The last operation failed (below). Nothing was lost: the files are on the "
    "volume or in the archive.",
}


class HomePageBase(PageHandler):
    async def home_page(self, user: str, own: bool) -> None:
        who = self.identity()
        admin = who.is_admin
        lc = self.ctx.lc

        def load() -> dict[str, Any]:
            try:
                home = queries.get_home(lc.db, user)
            except queries.HomeNotFound:
                home = None
            leases = queries.active_leases(lc.db, user, lc.now()) if home else []
            events = queries.events(lc.db, user, limit=30, newest_first=True) if admin else []
            snap_error = None
            try:
                snaps = list(reversed(lc.repo.list_snapshots(user)))
            except Error as exc:
                public = stand_in(exc)
                if public is not None:
                    self.log_exception(type(public), public, None)
                    exc = public
                snaps, snap_error = [], exc.get_message()
            home_error = None
            failed = recorded_failure(lc, user) if home and home.state == "failed" else None
            if home is not None and failed is not None:
                # The recorded error names paths and objects: only admins read its detail.
                home_error = failed.user_message()
                if notified:
                    for plain, told in NOTIFIED:
                        home_error = home_error.replace(plain, told)
            recorded = None
            if admin and home is not None and home.error:
                recorded = listing.last_errors(lc.db, [user]).get(user)
            return dict(
                recorded=recorded,
                home=home,
                leases=leases,
                events=events,
                snaps=snaps,
                snap_error=snap_error,
                home_error=home_error,
            )

        notifier = self.ctx.notifier
        notified = notifier is not None and notifier.enabled
        data = await self.blocking(load)
        job = self.ctx.tracker.get(user)
        archiving = self.ctx.archives.get(user) if admin and self.ctx.archives else None
        home = data["home"]
        running = (
            (job is not None and job.state == "running")
            or (archiving is not None and archiving.state == "running")
            or (home is not None and home.state in ("restoring", "archiving"))
        )
        why = None
        if admin and home is not None and home.error:
            why = explain(home.error, data["recorded"])
        self.take_flash()
        self.render(
            "home.html",
            user=user,
            own=own,
            admin=admin,
            may_restore=who.may("restore", user),
            state_text=STATE_TEXT,
            job=job.doc(admin) if job else None,
            archiving=archiving,
            why=why,
            event_detail=event_detail,
            explain=explain,
            refresh=2 if running else None,
            back="own" if own else "home",
            **data,
        )


class OwnHomePage(HomePageBase):
    """``/``: the signed-in user's own home."""

    @web.authenticated
    async def get(self) -> None:
        who = self.identity()
        if who.kind != "user":
            raise NotAUser(who.kind)
        await self.home_page(who.name, own=True)


class HomePage(HomePageBase):
    """``/homes/USER``: one home, for its user or an admin."""

    @web.authenticated
    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("read", user)
        await self.home_page(user, own=who.kind == "user" and who.name == user)


class BrowsePage(PageHandler):
    """``/homes/USER/snapshots/ID/browse?path=…``: one folder of a snapshot."""

    def path_arg(self) -> bytes:
        b64 = self.get_query_argument("path_b64", None)
        if b64 is not None:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError("path_b64 is not base64") from None
        return os.fsencode(self.get_query_argument("path", "") or "")

    @web.authenticated
    async def get(self, user: str, ref: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("read", user)
        path = self.path_arg().strip(b"/")
        repo = self.ctx.lc.repo
        snap = await self.blocking(repo.find_snapshot, ref, user)
        nodes = await self.blocking(list_dir, repo, snap, path)
        nodes.sort(key=lambda n: (n.type != "dir", n.name.lower()))
        api = ("api", "homes", user, "snapshots", snap.id)
        entries = []
        for n in nodes:
            child = path + b"/" + n.name if path else n.name
            where = path_query(child)
            entries.append(
                {
                    "name": n.name.decode("utf-8", "replace"),
                    "type": n.type,
                    "size": n.size if n.type == "file" else None,
                    "mtime": dt.datetime.fromtimestamp(n.mtime_ns / 1e9, dt.UTC),
                    "target": (n.target or b"").decode("utf-8", "replace"),
                    "browse": self.url("homes", user, "snapshots", snap.id, "browse", **where)
                    if n.type == "dir"
                    else None,
                    "file": self.url(*api, "file", **where)
                    if n.type == "file" and n.error is None
                    else None,
                    "zip": self.url(*api, "archive", format="zip", **where)
                    if n.type == "dir"
                    else None,
                    "preview": self.url("homes", user, "snapshots", snap.id, "preview", **where)
                    if n.type == "file" and n.error is None
                    else None,
                }
            )
        crumbs = [("home", self.url("homes", user, "snapshots", snap.id, "browse"))]
        parts = [p for p in path.split(b"/") if p]
        for i, part in enumerate(parts):
            sub = b"/".join(parts[: i + 1])
            link = self.url("homes", user, "snapshots", snap.id, "browse", **path_query(sub))
            crumbs.append((part.decode("utf-8", "replace"), link))
        here = path_query(path) if path else {}
        self.render(
            "browse.html",
            user=user,
            snap=snap,
            admin=who.is_admin,
            crumbs=crumbs,
            entries=entries,
            zip_url=self.url(*api, "archive", format="zip", **here),
            tar_url=self.url(*api, "archive", format="tar", **here),
            back=self.url() + "/" if who.name == user else self.url("homes", user),
        )


__all__ = [
    "AdminPage",
    "BrowsePage",
    "HomeAction",
    "HomePage",
    "OwnHomePage",
    "StaticHandler",
]
