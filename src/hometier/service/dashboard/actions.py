"""The dashboard's POST actions: restore, archive now, exempt and unexempt a home.

Each calls what the API calls (``Tracker.start``, ``archive_home``, ``set_exempt``),
records the actor as ``dashboard:NAME``, and sends the browser back to a page with a
one-line message. The XSRF token is checked here once more, after HubOAuth's check.

"Archive now" asks first: ``GET …/archive`` is a confirmation page (no script needed),
and only its form (``confirmed=yes``) starts the archive, in the background
(``archives.BackgroundArchives``); a home with a lease or an exemption is refused before
anything starts.
"""

from __future__ import annotations

from tornado import web

from hometier.errors import Conflict, Error, UsageError
from hometier.service.auth import Identity
from hometier.service.dashboard.base import FormRefused, PageHandler
from hometier.service.outages import stand_in
from hometier.state import listing, queries


class NotNow(Conflict):
    """{} cannot be archived now: {}."""


class HomeAction(PageHandler):
    """POST ``/homes/USER/{archive,restore,exempt,unexempt}``, then back to a page;
    GET ``/homes/USER/archive`` asks whether to archive."""

    @web.authenticated
    async def get(self, user: str, action: str) -> None:
        if action != "archive":
            raise web.HTTPError(405)
        user = self.user_arg(user)
        who = self.identity()
        who.require("admin", user)
        lc = self.ctx.lc

        def load() -> tuple[int, int]:
            return listing.size_of(lc.db, user), len(queries.active_leases(lc.db, user, lc.now()))

        try:
            size, leases = await self.blocking(load)
        except queries.HomeNotFound:
            size, leases = 0, 0
        back = self.get_query_argument("back", "home")
        self.render(
            "confirm.html",
            user=user,
            size=size,
            leases=leases,
            back=back,
            cancel=self.url("admin") if back == "admin" else self.url("homes", user),
        )

    async def post(self, user: str, action: str) -> None:
        if not self.current_user:
            # HubOAuth ignores a cookie whose form lacks the matching XSRF token.
            raise FormRefused()
        self.check_xsrf_cookie()
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore" if action == "restore" else "admin", user)
        kind = "ok"
        try:
            kind, text = await getattr(self, f"_{action}")(who, user)
        except Error as exc:
            public = stand_in(exc)
            if public is not None:
                self.log_exception(type(public), public, None)
            kind, text = "error", (public or exc).get_message()
        self.set_flash(kind, text)
        back = self.get_body_argument("back", "home")
        if action == "archive" and kind == "ok":
            back = "home"  # the home's page follows the archive's progress
        if back == "admin" and who.is_admin:
            target = self.url("admin")
        elif back == "own" and who.name == user:
            target = self.prefix + "/"
        else:
            target = self.url("homes", user)
        self.redirect(target, status=303)

    async def _restore(self, who: Identity, user: str) -> tuple[str, str]:
        await self.blocking(queries.get_home, self.ctx.lc.db, user)  # 404 for unknown homes
        _job, started = self.ctx.tracker.start(user, f"dashboard:{who.name}")
        if started:
            return "ok", f"Restore of {user} started."
        return "ok", f"A restore of {user} was already running; this page follows it."

    async def _archive(self, who: Identity, user: str) -> tuple[str, str]:
        if self.get_body_argument("confirmed", "") != "yes":
            raise UsageError("Archive now needs its confirmation: use the Archive now button")
        lc = self.ctx.lc

        def check() -> None:
            home = queries.get_home(lc.db, user)
            if home.state != "active":
                raise NotNow(user, f"it is {home.state}")
            if home.exempt:
                raise NotNow(user, "it is exempt")
            n = len(queries.active_leases(lc.db, user, lc.now()))
            if n:
                raise NotNow(user, f"it has {n} active lease(s)")

        await self.blocking(check)
        _job, started = self.ctx.archives.start(user, who.name)
        if started:
            return "ok", f"Archive of {user} started; this page follows it."
        return "ok", f"An archive of {user} was already running; this page follows it."

    async def _exempt(self, who: Identity, user: str) -> tuple[str, str]:
        return await self._set_exempt(who, user, True)

    async def _unexempt(self, who: Identity, user: str) -> tuple[str, str]:
        return await self._set_exempt(who, user, False)

    async def _set_exempt(self, who: Identity, user: str, exempt: bool) -> tuple[str, str]:
        reason = (self.get_body_argument("reason", "") or "")[:500] if exempt else None
        lc = self.ctx.lc
        actor = f"dashboard:{who.name}"

        def apply() -> None:
            queries.get_or_create_home(lc.db, user, str(lc.layout.path(user)), lc.now(), actor)
            queries.set_exempt(lc.db, user, exempt, reason, actor, lc.now())

        await self.blocking(apply)
        if exempt:
            return "ok", f"{user} is now exempt from archiving."
        return "ok", f"{user} is no longer exempt from archiving."
