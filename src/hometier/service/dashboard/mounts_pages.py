"""The bucket folders' pages: ``/bucket-folders`` and ``/bucket-folders/NAME/browse``.

Users see the folders they may use, where their servers have them, and what happened to
those mounts (a daemon that died and came back is told here). Admins also register and
remove folders (credentials go in, sealed, and never come back) and see every host
mount. Browsing and downloads go through the object-store API, not through a mount.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from hometier.errors import Error
from hometier.mounts import folders
from hometier.mounts.spec import AccessRule, InvalidFolder, Mode
from hometier.service.api.mounts import MountsBase, objects_of
from hometier.service.dashboard.base import FormRefused, PageHandler
from hometier.service.outages import stand_in
from hometier.state import mounts as q

EVENT_TEXT = {
    "mount.attach": "attached",
    "mount.release": "released",
    "mount.busy": "still in use at release; retried until free",
    "mount.lost": "interrupted",
    "mount.recovered": "reconnected",
    "mount.rebound": "reconnected (open files must be opened again)",
    "mount.unmount": "unmounted",
}


class _Page(PageHandler, MountsBase):
    pass


class FoldersPage(_Page):
    @web.authenticated
    async def get(self) -> None:
        self.take_flash()
        who = self.identity()

        def load() -> dict[str, Any]:
            with self.ctx.lc.db.transaction(write=False) as s:
                rows = q.list_folders(s)
                names = {r.id: r.name for r in rows}
                shown: list[tuple[q.BucketFolder, Mode | None]]
                if who.is_admin:
                    shown = [(r, None) for r in rows]
                elif who.kind == "user":
                    uses = folders.usable(s, who.name, self.groups(who.name))
                    shown = [(u.row, u.mode) for u in uses]
                else:
                    shown = []
                mine = [
                    (a, names.get(a.folder_id, "?"))
                    for a, _h in q.server_attachments(s, None, who.name, None)
                ]
                events = q.mount_events(s, who.name, limit=20)
                mounts = q.all_host_mounts(s) if who.is_admin else []
                return dict(
                    shown=shown,
                    mine=mine,
                    events=events,
                    mounts=[(m, names.get(m.folder_id, "?")) for m in mounts],
                )

        data = await self.blocking(load)
        self.render(
            "bucket_folders.html",
            admin=who.is_admin,
            event_text=EVENT_TEXT,
            mounting=self.ctx.mounts is not None,
            **data,
        )


class FolderAction(_Page):
    """POST ``/bucket-folders`` (register) and ``/bucket-folders/NAME/delete``."""

    async def post(self, name: str | None = None) -> None:
        if not self.current_user:
            raise FormRefused()
        self.check_xsrf_cookie()
        who = self.identity()
        who.require("admin", None)
        actor = f"dashboard:{who.name}"
        try:
            if name is None:
                doc = self._form()
                await self.blocking(
                    folders.register, self.ctx.lc.db, self.sealer, doc, actor, self.ctx.lc.now()
                )
                self.set_flash("ok", f"Bucket folder {doc['name']} registered.")
            else:
                await self.blocking(folders.remove, self.ctx.lc.db, name, actor, self.ctx.lc.now())
                self.set_flash("ok", f"Bucket folder {name} removed.")
        except Error as exc:
            public = stand_in(exc)
            self.set_flash("error", (public or exc).get_message())
        self.redirect(self.url("bucket-folders"), status=303)

    def _form(self) -> dict[str, Any]:
        arg = self.get_body_argument
        rules = [r.strip() for r in (arg("access", "") or "").replace("\n", ",").split(",")]
        access = [AccessRule.from_doc(r).to_doc() for r in rules if r]
        doc: dict[str, Any] = {
            "name": (arg("name", "") or "").strip(),
            "bucket": (arg("bucket", "") or "").strip(),
            "endpoint": (arg("endpoint", "") or "").strip(),
            "region": (arg("region", "") or "").strip() or "us-east-1",
            "prefix": (arg("prefix", "") or "").strip(),
            "mount_path": (arg("mount_path", "") or "").strip() or "buckets/{name}",
            "read_only": arg("read_only", "") == "on",
            "description": (arg("description", "") or "").strip(),
            "access": access,
        }
        key, secret = (arg("access_key_id", "") or "").strip(), arg("secret_access_key", "") or ""
        if key or secret:
            doc["credentials"] = {"access_key_id": key, "secret_access_key": secret.strip()}
        if not doc["name"]:
            raise InvalidFolder("give the folder a name")
        return doc


class FolderBrowsePage(_Page):
    @web.authenticated
    async def get(self, name: str) -> None:
        row, mode = await self.blocking(self.usable_folder, name)
        path = (self.get_query_argument("path", "") or "").strip("/")
        entries = await self.blocking(lambda: objects_of(row, self.sealer).list_dir(path))
        crumbs = [(row.name, self.url("bucket-folders", row.name, "browse"))]
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            crumbs.append((part, self.url("bucket-folders", row.name, "browse", path=sub)))
        shown = []
        for e in entries:
            child = f"{path}/{e.name}" if path else e.name
            shown.append(
                {
                    "name": e.name,
                    "type": e.kind,
                    "size": e.size if e.kind == "file" else None,
                    "modified": e.modified,
                    "link": self.url("bucket-folders", row.name, "browse", path=child)
                    if e.kind == "dir"
                    else self.url("api", "bucket-folders", row.name, "file", path=child),
                }
            )
        self.render(
            "bucket_browse.html",
            folder=row,
            mode=mode or ("ro" if row.read_only else "rw"),
            crumbs=crumbs,
            entries=shown,
        )


def mount_pages(p: str) -> list[tuple[str, Any]]:
    name = r"(?P<name>[a-z0-9][a-z0-9-]{0,39})"
    return [
        (rf"{p}/bucket-folders", FoldersPage),
        (rf"{p}/bucket-folders/new", FolderAction),
        (rf"{p}/bucket-folders/{name}/delete", FolderAction),
        (rf"{p}/bucket-folders/{name}/browse", FolderBrowsePage),
    ]


__all__ = ["mount_pages"]
