"""The dashboard's POST actions: restore, archive now, exempt and unexempt a home.

Each calls what the API calls (``Tracker.start``, ``archive_home``, ``set_exempt``),
records the actor as ``dashboard:NAME``, and sends the browser back to a page with a
one-line message. The XSRF token is checked here once more, after HubOAuth's check.
"""

from __future__ import annotations

from hometier.errors import Error
from hometier.lifecycle.cycle import archive_home
from hometier.service.auth import Identity
from hometier.service.dashboard.base import FormRefused, PageHandler
from hometier.service.dashboard.summary import human_bytes
from hometier.service.outages import stand_in
from hometier.state import queries


class HomeAction(PageHandler):
    """POST ``/homes/USER/{archive,restore,exempt,unexempt}``, then back to a page."""

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
        result = await self.blocking(archive_home, self.ctx.lc, user)  # counted by on_archive
        text = f"Archive of {user}: {result.outcome}"
        if result.reason:
            text += f" ({result.reason})"
        if result.outcome == "archived":
            text += f", {human_bytes(result.bytes)} now only in the bucket."
        return ("ok" if result.outcome == "archived" else "error"), text

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
