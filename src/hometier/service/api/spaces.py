"""Shared spaces: list, create, change, members, archive/restore, snapshots, audit; and
what a user's server mounts (``/api/homes/USER/spaces``, for the spawn hooks).

Who may do what (``hometier.spaces.manage.Viewer``): every user sees public and private
spaces, members see their secret ones; the owner and hometier's admins manage a space;
members and (except for secret spaces) admins read its contents. A secret space a caller
may not see answers 404 with the very words a name nobody uses gets — in every route,
whatever the method. Reading a secret space's snapshot is written to the event log.
"""

from __future__ import annotations

import os
from typing import Any

from tornado import web

from hometier.errors import Error, NotFound, UsageError
from hometier.lifecycle.units import parse_size
from hometier.service.api.base import BaseHandler
from hometier.service.auth import Forbidden
from hometier.spaces import manage, mounts, reconcile, tiering
from hometier.spaces.manage import Viewer
from hometier.state import spaces as q
from hometier.state.spaces import Space

SPACE = r"(?P<name>[^/]+)"
SNAP = r"(?P<ref>[^/]+)"


class SpacesOff(NotFound):
    """Shared spaces are not enabled here (c.Spaces.root is not set)."""


class NotManager(Error):
    """Only the owner of space {} or a hometier admin may {} it."""

    http_status = 403
    exit_code = 2


def space_doc(sp: Any, space: Space, viewer: Viewer, *, full: bool = False) -> dict[str, Any]:
    role = viewer.role(sp, space)
    doc: dict[str, Any] = {
        "name": space.name,
        "level": space.level,
        "kind": space.kind,
        "owner": space.owner,
        "description": space.description,
        "state": space.state,
        "role": role if role else ("reader" if space.level == "public" else None),
        "quota_bytes": space.quota_bytes,
        "over_quota": space.over_quota,
        "created_at": space.created_at,
    }
    insider = role is not None or viewer.manages(space)
    if insider:
        doc.update(
            used_bytes=space.used_bytes,
            used_files=space.used_files,
            last_activity=space.last_activity,
            archived_at=space.archived_at,
            restored_at=space.restored_at,
        )
    if full and insider:
        doc["members"] = [
            {"kind": m.kind, "name": m.name, "role": m.role} for m in q.members(sp.db, space.id)
        ]
        doc["access"] = [
            {"user": u, "role": r} for u, r in sorted(q.access(sp.db, space.id).items())
        ]
    if viewer.admin:
        doc.update(gid=space.gid, exempt=space.exempt, error=space.error)
    return doc


class SpacesBase(BaseHandler):
    @property
    def sp(self) -> Any:
        sp = getattr(self.ctx, "spaces", None)
        if sp is None:
            raise SpacesOff()
        return sp

    def viewer(self) -> Viewer:
        who = self.identity()
        return Viewer(who.name, admin=who.is_admin, is_user=who.kind == "user")

    async def space(self, name: str, viewer: Viewer) -> Space:
        space: Space = await self.blocking(manage.find, self.sp, name, viewer)
        return space

    def actor(self, viewer: Viewer) -> str:
        return f"api:{viewer.name}"[:255]

    def require_manager(self, space: Space, viewer: Viewer, what: str) -> None:
        if not viewer.manages(space):
            raise NotManager(space.name, what)

    def require_reader(self, space: Space, viewer: Viewer) -> None:
        if not viewer.reads(self.sp, space):
            if space.level == "secret":
                raise q.SpaceNotFound(space.name)  # admins: the contents stay hidden
            raise Forbidden(viewer.name, "read", f"space {space.name}")


def _quota(doc: dict[str, Any]) -> int | None:
    raw = doc.get("quota", doc.get("quota_bytes"))
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise UsageError("quota is a size like '50GB' or a number of bytes")
    return parse_size(raw)


class SpacesHandler(SpacesBase):
    async def get(self) -> None:
        viewer = self.viewer()

        def load() -> list[dict[str, Any]]:
            return [space_doc(self.sp, s, viewer) for s in manage.visible(self.sp, viewer)]

        self.send({"spaces": await self.blocking(load)})

    async def post(self) -> None:
        viewer = self.viewer()
        if not viewer.admin:
            raise Forbidden(viewer.name, "create", "a space")
        doc = self.body()
        members = manage.parse_members(doc.get("members"))
        quota = _quota(doc) or 0
        space = await self.blocking(
            manage.create,
            self.sp,
            name=doc.get("name"),
            level=doc.get("level", "private"),
            kind=doc.get("kind", "data"),
            owner=str(doc.get("owner") or viewer.name),
            quota_bytes=quota,
            description=str(doc.get("description", "")),
            members=members,
            actor=self.actor(viewer),
        )
        self.send(await self.blocking(space_doc, self.sp, space, viewer, full=True), 201)


class SpaceHandler(SpacesBase):
    async def get(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.send(await self.blocking(space_doc, self.sp, space, viewer, full=True))

    async def patch(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_manager(space, viewer, "change")
        doc = self.body()
        changes: dict[str, Any] = {
            k: doc[k] for k in ("level", "description", "exempt") if k in doc
        }
        if "owner" in doc:
            if not viewer.admin:
                raise NotManager(space.name, "hand over")  # only admins change owners
            changes["owner"] = doc["owner"]
        quota = _quota(doc)
        if quota is not None:
            changes["quota_bytes"] = quota
        if "exempt" in changes and not viewer.admin:
            raise NotManager(space.name, "exempt from archiving")
        space = await self.blocking(
            manage.update, self.sp, space, changes, actor=self.actor(viewer)
        )
        if "members" in doc:
            members = manage.parse_members(doc["members"])
            await self.blocking(
                manage.set_members, self.sp, space, members, actor=self.actor(viewer)
            )
        self.send(await self.blocking(space_doc, self.sp, space, viewer, full=True))

    async def delete(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_manager(space, viewer, "delete")
        await self.blocking(manage.delete, self.sp, space, actor=self.actor(viewer))
        self.send({"name": name, "deleted": True})


class MembersHandler(SpacesBase):
    async def get(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        if viewer.role(self.sp, space) is None and not viewer.manages(space):
            raise Forbidden(viewer.name, "list the members of", f"space {space.name}")
        doc = await self.blocking(space_doc, self.sp, space, viewer, full=True)
        self.send({"members": doc["members"], "access": doc["access"]})

    async def put(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_manager(space, viewer, "change the members of")
        members = manage.parse_members(self.body().get("members"))
        report = await self.blocking(
            manage.set_members, self.sp, space, members, actor=self.actor(viewer)
        )
        changes = [
            {"user": u, "was": a, "now": b} for u, a, b in report.changes.get(space.name, [])
        ]
        self.send({"changes": changes, "missing": report.missing.get(space.name, [])})


class ActionHandler(SpacesBase):
    async def post(self, name: str, action: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        if action == "archive":
            self.require_manager(space, viewer, "archive")
            running = await self.blocking(running_members, self.sp, space)
            out = await self.blocking(
                tiering.archive_space, self.sp, space, actor=self.actor(viewer), running=running
            )
        else:
            self.require_reader(space, viewer)
            out = await self.blocking(
                tiering.restore_space, self.sp, space, actor=self.actor(viewer)
            )
        self.send(out.__dict__)


def running_members(sp: Any, space: Space) -> int:
    view, ok = reconcile.hub_view(sp)
    if view is None:
        return 0 if ok else 1  # the Hub cannot say: treat as in use
    users = set(q.access(sp.db, space.id))
    return len(view.running & users) if space.level != "public" else len(view.running)


class SnapshotsHandler(SpacesBase):
    async def get(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_reader(space, viewer)
        rows = await self.blocking(q.space_snapshots, self.sp.db, space.id)
        docs = [{"id": r.id, "time": r.time, "files": r.files, "bytes": r.bytes} for r in rows]
        self.send({"snapshots": docs})


class TreeHandler(SpacesBase):
    """A folder of a space's snapshot (``?path=``), or with ``/file`` one file's bytes."""

    async def get(self, name: str, ref: str, what: str) -> None:
        from hometier.engine.export import find, iter_content, list_dir

        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_reader(space, viewer)
        path = os.fsencode(self.get_query_argument("path", ""))
        sp = self.sp

        def open_snap() -> Any:
            repo = sp.repository(space, create=False)
            known = {r.id for r in q.space_snapshots(sp.db, space.id)}
            snap = repo.find_snapshot(ref, space.key)
            if snap.id not in known:
                raise NotFound(f"Snapshot {ref} not found.")
            if space.level == "secret":
                with sp.db.transaction() as s:
                    q.log_event(
                        s,
                        space,
                        "space.snapshot_read",
                        self.actor(viewer),
                        sp.now(),
                        user=viewer.name,
                        snapshot=snap.id,
                        path=os.fsdecode(path),
                        what=what,
                    )
            return repo, snap

        repo, snap = await self.blocking(open_snap)
        if what == "tree":
            nodes = await self.blocking(list_dir, repo, snap, path)
            self.send(
                {
                    "path": os.fsdecode(path),
                    "entries": [
                        {"name": os.fsdecode(n.name), "type": n.type, "size": n.size} for n in nodes
                    ],
                }
            )
            return
        node = await self.blocking(find, repo, snap, path)
        if node.type != "file":
            raise UsageError("not a file")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", "attachment")
        for chunk in await self.blocking(lambda: list(iter_content(repo, node))):
            self.write(chunk)
        await self.flush()
        self.finish()


class EventsHandler(SpacesBase):
    async def get(self, name: str) -> None:
        viewer = self.viewer()
        space = await self.space(name, viewer)
        self.require_manager(space, viewer, "read the log of")
        events = await self.blocking(q.space_events, self.sp.db, space.id, 200)
        self.send(
            {
                "events": [
                    {
                        "at": e.at,
                        "kind": e.kind,
                        "user": e.user,
                        "actor": e.actor,
                        "from_state": e.from_state,
                        "to_state": e.to_state,
                        "detail": e.detail,
                    }
                    for e in events
                ]
            }
        )


class SyncHandler(SpacesBase):
    async def post(self) -> None:
        viewer = self.viewer()
        if not viewer.admin:
            raise Forbidden(viewer.name, "synchronise", "every space")
        report = await self.blocking(reconcile.reconcile, self.sp, actor=self.actor(viewer))
        self.send(
            {
                "hub_ok": report.hub_ok,
                "applied": report.applied,
                "changes": {
                    k: [{"user": u, "was": a, "now": b} for u, a, b in v]
                    for k, v in report.changes.items()
                },
                "errors": report.errors,
            }
        )


class UserSpacesHandler(SpacesBase):
    """``GET``: what ``user``'s server mounts. ``POST`` (the spawn hooks): first follow the
    Hub's groups, restore archived spaces the user will mount, and with ``{"link": true}``
    write the links in their home; then the same answer."""

    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("restore", user)
        found = await self.blocking(mounts.mounts_for, self.sp, user)
        self.send({"user": user, "mounts": [m.doc() for m in found]})

    async def post(self, user: str) -> None:
        user = self.user_arg(user)
        who = self.identity()
        who.require("restore", user)
        link = bool(self.body().get("link"))
        sp = self.sp
        actor = f"spawn:{user}"[:255]

        def prepare() -> dict[str, Any]:
            reconcile.reconcile(sp, actor=actor)
            found = mounts.mounts_for(sp, user)
            restored, failed = [], []
            for m in found:
                if m.state in ("archived", "failed"):
                    try:
                        tiering.restore_space(sp, q.get_space(sp.db, m.name), actor=actor)
                        restored.append(m.name)
                    except Error as exc:
                        failed.append({"name": m.name, "error": exc.get_message()})
            if restored:
                found = mounts.mounts_for(sp, user)
            for m in found:
                q.touch(sp.db, q.get_space(sp.db, m.name).id, sp.now())
            doc: dict[str, Any] = {"user": user, "mounts": [m.doc() for m in found]}
            doc.update(restored=restored, failed=failed)
            if link:
                doc["links"] = mounts.link_home(sp, user, found)
            return doc

        self.send(await self.blocking(prepare))


def routes(p: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (rf"{p}/api/spaces", SpacesHandler),
        (rf"{p}/api/spaces/_sync", SyncHandler),
        (rf"{p}/api/spaces/{SPACE}", SpaceHandler),
        (rf"{p}/api/spaces/{SPACE}/members", MembersHandler),
        (rf"{p}/api/spaces/{SPACE}/(?P<action>archive|restore)", ActionHandler),
        (rf"{p}/api/spaces/{SPACE}/snapshots", SnapshotsHandler),
        (rf"{p}/api/spaces/{SPACE}/snapshots/{SNAP}/(?P<what>tree|file)", TreeHandler),
        (rf"{p}/api/spaces/{SPACE}/events", EventsHandler),
        (rf"{p}/api/homes/(?P<user>[^/]+)/spaces", UserSpacesHandler),
    ]
