"""The dashboard's shared spaces: ``/spaces`` (the spaces the signed-in user may see,
every space for an admin) and ``/spaces/NAME`` (one space: its members for insiders,
its log for managers; Restore for readers of an archived space, Archive for managers).

Visibility is the API's (``hometier.spaces.manage``): a secret space a user may not see
is answered with the same 404 page as a name nobody uses.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from hometier.errors import Error
from hometier.service.api.spaces import SpacesOff, running_members, space_doc
from hometier.service.dashboard.base import FormRefused, PageHandler
from hometier.spaces import manage, tiering
from hometier.spaces.manage import Viewer
from hometier.state import spaces as q

SPACE = r"(?P<name>[^/]+)"


class SpacesPage(PageHandler):
    @property
    def sp(self) -> Any:
        sp = getattr(self.ctx, "spaces", None)
        if sp is None:
            raise SpacesOff()
        return sp

    def viewer(self) -> Viewer:
        who = self.identity()
        return Viewer(who.name, admin=who.is_admin, is_user=who.kind == "user")


class SpacesList(SpacesPage):
    """``/spaces``."""

    @web.authenticated
    async def get(self) -> None:
        viewer = self.viewer()
        sp = self.sp

        def load() -> list[dict[str, Any]]:
            return [space_doc(sp, s, viewer) for s in manage.visible(sp, viewer)]

        self.take_flash()
        self.render("spaces.html", spaces=await self.blocking(load), admin=viewer.admin)


class SpacePage(SpacesPage):
    """``/spaces/NAME``."""

    @web.authenticated
    async def get(self, name: str) -> None:
        viewer = self.viewer()
        sp = self.sp

        def load() -> dict[str, Any]:
            space = manage.find(sp, name, viewer)
            events = q.space_events(sp.db, space.id, 40) if viewer.manages(space) else []
            return dict(
                space=space_doc(sp, space, viewer, full=True),
                events=events,
                manages=viewer.manages(space),
                reads=viewer.reads(sp, space),
            )

        data = await self.blocking(load)
        self.take_flash()
        self.render("space.html", **data)


class SpaceAction(SpacesPage):
    """POST ``/spaces/NAME/{restore,archive}``, then back to the space's page."""

    async def post(self, name: str, action: str) -> None:
        if not self.current_user:
            raise FormRefused()
        self.check_xsrf_cookie()
        viewer = self.viewer()
        sp = self.sp
        space = await self.blocking(manage.find, sp, name, viewer)
        actor = f"dashboard:{viewer.name}"
        try:
            if action == "archive":
                if not viewer.manages(space):
                    raise FormRefused()
                running = await self.blocking(running_members, sp, space)
                out = await self.blocking(
                    tiering.archive_space, sp, space, actor=actor, running=running
                )
            else:
                if not viewer.reads(sp, space):
                    raise FormRefused()
                out = await self.blocking(tiering.restore_space, sp, space, actor=actor)
            self.set_flash("ok", f"{space.name}: {out.outcome}")
        except Error as exc:
            self.set_flash("error", exc.get_message())
        self.redirect(self.url("spaces", space.name), status=303)


def routes(p: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (rf"{p}/spaces", SpacesList),
        (rf"{p}/spaces/{SPACE}", SpacePage),
        (rf"{p}/spaces/{SPACE}/(?P<action>archive|restore)", SpaceAction),
    ]
