"""Bucket folders over HTTP: the registry (admins), browsing and downloading through the
object-store API (whoever may use a folder), and attaching a server's folders at spawn
and releasing them at stop (the Hub's hooks, with a token of the user's).

Routes (under ``/api``): ``bucket-folders`` (GET, POST), ``bucket-folders/<name>``
(GET, PATCH, DELETE), ``bucket-folders/<name>/tree?path=`` and ``…/file?path=``,
``users/<user>/mounts`` (GET, POST to attach, DELETE ``?server=`` to release),
``mounts`` (GET: every host mount; POST ``mounts/check``: run the check loop now).

Who may use a folder is decided from the user's JupyterHub groups, which the service
reads from the Hub itself (never from the caller).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from jupyterhub.services.auth import check_scopes

from hometier.errors import Error, NotFound, UsageError
from hometier.lifecycle.activity import HubUnavailable
from hometier.mounts import folders
from hometier.mounts.objects import FolderObjects
from hometier.mounts.spec import Mode
from hometier.scopes import ATTACH
from hometier.service.api.base import BaseHandler
from hometier.service.api.snapshots import _DONE, _Pipe
from hometier.service.auth import Forbidden, Identity
from hometier.state import mounts as q

log = logging.getLogger(__name__)
NAME = r"(?P<name>[a-z0-9][a-z0-9-]{0,39})"


class MountsDisabled(Error):
    """Bucket folders are not mounted by this service (c.Mounts.enabled is off, or it
    does not run as root)."""

    http_status = 503


def hub_groups(hub: Any, user: str) -> set[str]:
    """The user's JupyterHub groups (needs ``read:users:groups`` on the service's
    token); an unknown user has none."""
    if hub is None:
        return set()
    url = f"{hub.api_url}/users/{quote(user, safe='')}"
    req = urllib.request.Request(url, headers={"Authorization": f"token {hub.token}"})
    try:
        with urllib.request.urlopen(req, timeout=hub.timeout) as resp:  # noqa: S310
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise HubUnavailable(hub.api_url, f"HTTP {exc.code} {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise HubUnavailable(hub.api_url, str(exc)) from exc
    return {str(g) for g in doc.get("groups") or []}


def may_attach(who: Identity, user: str) -> bool:
    if who.is_admin or check_scopes({f"{ATTACH}!user={user}"}, who.scopes):
        return True
    return who.may("read", user)  # a user for their own servers


class MountsBase(BaseHandler):
    @property
    def mounts(self) -> Any:
        mgr = getattr(self.ctx, "mounts", None)
        if mgr is None:
            raise MountsDisabled()
        return mgr

    @property
    def sealer(self) -> Any:
        mgr = getattr(self.ctx, "mounts", None)
        if mgr is not None:
            return mgr.sealer
        return getattr(self.ctx, "sealer", None)

    def actor(self) -> str:
        return f"api:{self.identity().name}"

    def groups(self, user: str) -> set[str]:
        return hub_groups(self.ctx.lc.hub, user)

    def usable_folder(self, name: str) -> tuple[q.BucketFolder, Mode | None]:
        """The folder and the caller's mode; ``NotFound`` for a user who may not use it
        (as if it did not exist)."""
        who = self.identity()
        with self.ctx.lc.db.transaction(write=False) as s:
            row = q.get_folder(s, name)
        if who.is_admin:
            return row, None
        if who.kind != "user":
            raise q.FolderNotFound(name)
        mode = folders.spec_of(row).decide(who.name, self.groups(who.name))
        if mode is None:
            raise q.FolderNotFound(name)
        return row, mode


class FoldersHandler(MountsBase):
    async def get(self) -> None:
        who = self.identity()

        def load() -> list[dict[str, Any]]:
            with self.ctx.lc.db.transaction(write=False) as s:
                if who.is_admin:
                    return [folders.folder_doc(r, admin=True) for r in q.list_folders(s)]
                if who.kind != "user":
                    return []
                uses = folders.usable(s, who.name, self.groups(who.name))
                return [folders.folder_doc(u.row, admin=False, mode=u.mode) for u in uses]

        self.send({"folders": await self.blocking(load)})

    async def post(self) -> None:
        who = self.identity()
        who.require("admin", None)
        doc = self.body()
        row = await self.blocking(
            folders.register, self.ctx.lc.db, self.sealer, doc, self.actor(), self.ctx.lc.now()
        )
        self.send(folders.folder_doc(row, admin=True), 201)


class FolderHandler(MountsBase):
    async def get(self, name: str) -> None:
        row, mode = await self.blocking(self.usable_folder, name)
        self.send(folders.folder_doc(row, admin=mode is None, mode=mode))

    async def patch(self, name: str) -> None:
        self.identity().require("admin", None)
        row = await self.blocking(
            folders.change,
            self.ctx.lc.db,
            self.sealer,
            name,
            self.body(),
            self.actor(),
            self.ctx.lc.now(),
        )
        self.send(folders.folder_doc(row, admin=True))

    async def delete(self, name: str) -> None:
        self.identity().require("admin", None)
        await self.blocking(folders.remove, self.ctx.lc.db, name, self.actor(), self.ctx.lc.now())
        self.set_status(204)
        self.finish()


def objects_of(row: q.BucketFolder, sealer: Any) -> FolderObjects:
    return FolderObjects(folders.spec_of(row), folders.credentials_of(row, sealer))


class FolderTreeHandler(MountsBase):
    async def get(self, name: str) -> None:
        row, mode = await self.blocking(self.usable_folder, name)
        path = self.get_query_argument("path", "")

        def load() -> list[Any]:
            return objects_of(row, self.sealer).list_dir(path)

        entries = await self.blocking(load)
        self.send(
            {
                "folder": row.name,
                "path": path.strip("/"),
                "mode": mode or ("ro" if row.read_only else "rw"),
                "entries": [
                    {"name": e.name, "type": e.kind, "size": e.size, "modified": e.modified}
                    for e in entries
                ],
            }
        )


class FolderFileHandler(MountsBase):
    async def get(self, name: str) -> None:
        row, _mode = await self.blocking(self.usable_folder, name)
        path = self.get_query_argument("path", "")
        size, chunks = await self.blocking(lambda: objects_of(row, self.sealer).open_file(path))
        base = path.rstrip("/").rsplit("/", 1)[-1]
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(size))
        self.set_header(
            "Content-Disposition",
            f"attachment; filename*=UTF-8''{quote(os.fsencode(base), safe='')}",
        )
        pipe = _Pipe(asyncio.get_running_loop())

        def run() -> None:
            try:
                for chunk in chunks:
                    pipe.write(chunk)
                pipe.put(_DONE)
            except BaseException as exc:  # noqa: BLE001 - handed to the handler
                pipe.put(exc)

        self.ctx.downloads.submit(run)
        try:
            while True:
                item = await pipe.q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    # Headers are out: cut the connection, never a short "complete" file.
                    log.error("download of %s failed midway: %s", self.request.path, item)
                    self.request.connection.stream.close()  # type: ignore[union-attr]
                    return
                self.write(item)
                pipe.room.release()
                await self.flush()
        finally:
            pipe.closed.set()
            try:
                pipe.room.release()
            except ValueError:
                pass
        self.finish()


def _attachment_doc(att: q.MountAttachment, hm: q.HostMount, name: str) -> dict[str, Any]:
    return {
        "id": att.id,
        "folder": name,
        "server": att.server,
        "kind": att.kind,
        "target": att.target,
        "read_only": att.read_only,
        "state": att.state,
        "error": att.error,
        "host": hm.host,
        "mount_state": hm.state,
        "acquired_at": att.acquired_at,
    }


class ServerMountsHandler(MountsBase):
    """A user's attachments: list, attach (spawn), release (stop)."""

    def _check(self, user: str) -> str:
        user = self.user_arg(user)
        who = self.identity()
        if not may_attach(who, user):
            raise Forbidden(who.name or "this token", "attach bucket folders to", user)
        return user

    async def get(self, user: str) -> None:
        user = self._check(user)

        def load() -> list[dict[str, Any]]:
            with self.ctx.lc.db.transaction(write=False) as s:
                names = {f.id: f.name for f in q.list_folders(s)}
                pairs = q.server_attachments(s, None, user, None)
                return [_attachment_doc(a, h, names.get(a.folder_id, "?")) for a, h in pairs]

        self.send({"user": user, "attachments": await self.blocking(load)})

    async def post(self, user: str) -> None:
        user = self._check(user)
        mgr = self.mounts
        doc = self.body()
        server = str(doc.get("server") or "")
        kind = str(doc.get("kind") or "local")
        only = doc.get("folders")
        if only is not None and not (
            isinstance(only, list) and all(isinstance(n, str) for n in only)
        ):
            raise UsageError("folders must be a list of names")
        uid, gid = _ids(doc, kind)

        def run() -> list[dict[str, Any]]:
            groups = self.groups(user)
            home = None
            owner = (uid, gid)
            if kind == "local":
                home = self.ctx.lc.layout.path(user)
                owner = _home_owner(home, uid, gid)
            outcomes = mgr.attach_server(
                user,
                server,
                kind=kind,
                groups=groups,
                home=home,
                uid=owner[0],
                gid=owner[1],
                only=only,
            )
            with self.ctx.lc.db.transaction(write=False) as s:
                paths = {r.name: r.mount_path for r in q.list_folders(s)}
            return [dict(o.to_doc(), mount_path=paths.get(o.folder, "")) for o in outcomes]

        self.send({"user": user, "server": server, "attachments": await self.blocking(run)})

    async def delete(self, user: str) -> None:
        user = self._check(user)
        mgr = self.mounts
        server = self.get_query_argument("server", None)
        outcomes = await self.blocking(mgr.release_server, user, server)
        self.send({"user": user, "server": server, "released": [o.to_doc() for o in outcomes]})


def _ids(doc: dict[str, Any], kind: str) -> tuple[int, int]:
    try:
        uid = int(doc.get("uid", 1000 if kind == "host" else -1))
        gid = int(doc.get("gid", 100 if kind == "host" else -1))
    except (TypeError, ValueError):
        raise UsageError("uid and gid must be numbers") from None
    if kind == "host" and not (0 <= uid < 2**31 and 0 <= gid < 2**31):
        raise UsageError("uid and gid must be between 0 and 2**31")
    return uid, gid


def _home_owner(home: Any, uid: int, gid: int) -> tuple[int, int]:
    """A local server's identity: its home's owner. A home that does not exist yet (the
    spawner makes it later) is made now, private, for the uid/gid the Hub gave."""
    try:
        st = os.stat(home, follow_symlinks=False)
        return st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    if uid < 0 or gid < 0:
        raise NotFound(f"the home {home} does not exist yet and no uid/gid was given")
    os.makedirs(os.path.dirname(home), exist_ok=True)
    fd = None
    try:
        os.mkdir(home, 0o700)
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        os.fchown(fd, uid, gid)
    except FileExistsError:
        st = os.stat(home, follow_symlinks=False)
        return st.st_uid, st.st_gid
    finally:
        if fd is not None:
            os.close(fd)
    return uid, gid


class MountsHandler(MountsBase):
    async def get(self) -> None:
        self.identity().require("admin", None)

        def load() -> dict[str, Any]:
            with self.ctx.lc.db.transaction(write=False) as s:
                names = {f.id: f.name for f in q.list_folders(s)}
                out = []
                for hm in q.all_host_mounts(s):
                    out.append(
                        {
                            "host": hm.host,
                            "key": hm.key[:12],
                            "folder": names.get(hm.folder_id, "?"),
                            "revision": hm.folder_revision,
                            "read_only": hm.read_only,
                            "uid": hm.uid,
                            "gid": hm.gid,
                            "state": hm.state,
                            "refs": hm.refs,
                            "generation": hm.generation,
                            "pid": hm.pid,
                            "idle_since": hm.idle_since,
                            "error": hm.error,
                            "attachments": [
                                _attachment_doc(a, hm, names.get(a.folder_id, "?"))
                                for a in q.attachments_of(s, hm)
                            ],
                        }
                    )
                return {"mounts": out}

        self.send(await self.blocking(load))


class MountsCheckHandler(MountsBase):
    async def post(self) -> None:
        self.identity().require("admin", None)
        from hometier.mounts.reconcile import check

        mgr = self.mounts
        report = await self.blocking(check, mgr)
        self.send(report.to_doc())


def mount_routes(p: str) -> list[tuple[str, Any]]:
    user = r"(?P<user>[^/]+)"
    return [
        (rf"{p}/api/bucket-folders", FoldersHandler),
        (rf"{p}/api/bucket-folders/{NAME}", FolderHandler),
        (rf"{p}/api/bucket-folders/{NAME}/tree", FolderTreeHandler),
        (rf"{p}/api/bucket-folders/{NAME}/file", FolderFileHandler),
        (rf"{p}/api/users/{user}/mounts", ServerMountsHandler),
        (rf"{p}/api/mounts", MountsHandler),
        (rf"{p}/api/mounts/check", MountsCheckHandler),
    ]


__all__ = ["hub_groups", "mount_routes"]
