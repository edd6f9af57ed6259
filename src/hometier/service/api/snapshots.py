"""Snapshots of a home: list them, browse a folder, download a file or a folder.

Only the home's own user (or an admin) may read them. Paths are inside the snapshot;
``..`` never leaves it (names were validated when the trees were read). A name that is
not UTF-8 can be given as ``path_b64``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import os
import threading
from typing import Any
from urllib.parse import quote

from hometier.engine.export import find, iter_content, list_dir, write_tar, write_zip
from hometier.errors import UsageError
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.restoring import recorded_snapshot
from hometier.repo.snapshot import Snapshot
from hometier.service.api.base import BaseHandler
from hometier.state import queries

_DONE = object()
log = logging.getLogger(__name__)


def snap_doc(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "time": s.time,
        "files": s.stats.files,
        "bytes": s.stats.bytes,
        "stored_bytes": s.stats.bytes_new_stored,
        "complete": s.stats.complete,
        "parent": s.parent,
    }


def _name(raw: bytes) -> dict[str, str]:
    try:
        return {"name": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"name": raw.decode("utf-8", "replace"), "name_b64": base64.b64encode(raw).decode()}


class SnapshotBase(BaseHandler):
    def path_arg(self) -> bytes:
        b64 = self.get_query_argument("path_b64", None)
        if b64 is not None:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError("path_b64 is not base64") from None
        return os.fsencode(self.get_query_argument("path", ""))

    async def snapshot(self, user: str, ref: str, restore_ok: bool = False) -> tuple[str, Snapshot]:
        """The snapshot, for a caller who may read ``user``'s home (or, with
        ``restore_ok``, restore it: the whole latest snapshot as a stream is a restore)."""
        user = self.user_arg(user)
        who = self.identity()
        if not (restore_ok and who.may("restore", user)):
            who.require("read", user)
        snap = await self.blocking(_resolve, self.ctx.lc, user, ref)
        return user, snap


def _resolve(lc: Lifecycle, user: str, ref: str) -> Snapshot:
    """``latest`` of an archived home is the snapshot its archive recorded (what a
    restore brings back, e.g. the per-user-volume stream), not merely the newest one."""
    if ref == "latest":
        try:
            home = queries.get_home(lc.db, user)
        except queries.HomeNotFound:
            home = None
        if home is not None and home.is_cold:
            return recorded_snapshot(lc, home)
    return lc.repo.find_snapshot(ref, user)


class SnapshotsHandler(BaseHandler):
    async def get(self, user: str) -> None:
        user = self.user_arg(user)
        self.identity().require("read", user)
        admin = self.identity().is_admin
        snaps = await self.blocking(self.ctx.lc.repo.list_snapshots, user)
        docs = [snap_doc(s) for s in reversed(snaps)]
        if not admin:
            for d in docs:
                d.pop("stored_bytes")  # dedup probing: admins only
        self.send({"snapshots": docs})


class TreeHandler(SnapshotBase):
    async def get(self, user: str, ref: str) -> None:
        _user, snap = await self.snapshot(user, ref)
        path = self.path_arg()
        nodes = await self.blocking(list_dir, self.ctx.lc.repo, snap, path)
        entries = []
        for n in nodes:
            e: dict[str, Any] = _name(n.name)
            e.update(type=n.type, size=n.size if n.type == "file" else None, mode=oct(n.mode))
            e["mtime"] = n.mtime_ns / 1e9
            if n.type == "symlink":
                e["target"] = (n.target or b"").decode("utf-8", "replace")
            entries.append(e)
        self.send(
            {"snapshot": snap.id, "path": path.decode("utf-8", "replace"), "entries": entries}
        )


class _Pipe:
    """A writable file for a producer thread, drained by the handler on the event loop.

    At most ``DEPTH`` chunks wait; a producer that cannot hand a chunk over for
    ``STALL`` seconds (the client stopped reading) gives up, so a stalled download
    frees its thread instead of holding it forever.
    """

    DEPTH = 8
    STALL = 60.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        self.room = threading.BoundedSemaphore(self.DEPTH)
        self.closed = threading.Event()

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.q.put_nowait, item)

    def write(self, data: bytes) -> int:
        if not self.room.acquire(timeout=self.STALL) or self.closed.is_set():
            raise BrokenPipeError("the client stopped reading")
        self.put(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class DownloadHandler(SnapshotBase):
    """``/file`` streams one file; ``/archive?format=tar|zip`` a folder (or the home)."""

    async def get(self, user: str, ref: str, kind: str) -> None:
        path = self.path_arg()
        # The per-user-volume init container holds only the one-spawn restore token: it
        # may fetch the whole latest snapshot as a tar, which is exactly a restore.
        whole = kind == "archive" and ref == "latest" and not path.strip(b"/")
        whole = whole and self.get_query_argument("format", "tar") == "tar"
        _user, snap = await self.snapshot(user, ref, restore_ok=whole)
        repo = self.ctx.lc.repo.for_snapshot(snap)  # reads go through its locator
        node = await self.blocking(find, repo, snap, path)
        base = os.fsdecode(path.rstrip(b"/").rsplit(b"/", 1)[-1]) or snap.user
        pipe = _Pipe(asyncio.get_running_loop())
        if kind == "file":
            if node.type != "file" or node.error is not None:
                raise UsageError("that path is not a regular file in the snapshot")
            if node.link is not None:
                node = await self.blocking(find, repo, snap, node.link)
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(node.size))
            name = base

            def produce() -> None:
                for chunk in iter_content(repo, node):
                    pipe.write(chunk)

        else:
            fmt = self.get_query_argument("format", "tar")
            if fmt not in ("tar", "zip"):
                raise UsageError("format must be tar or zip")
            self.set_header(
                "Content-Type", "application/x-tar" if fmt == "tar" else "application/zip"
            )
            # Named by whose and when, so that several downloads do not collide.
            day = snap.time.astimezone(dt.UTC).strftime("%Y-%m-%d")
            folder = "" if base == snap.user else f"-{base}"
            name = f"{snap.user}-{day}{folder}.{fmt}"

            def produce() -> None:
                (write_tar if fmt == "tar" else write_zip)(repo, snap, path, pipe)  # type: ignore[arg-type]

        self.set_header(
            "Content-Disposition",
            f"attachment; filename*=UTF-8''{quote(os.fsencode(name), safe='')}",
        )
        await self._stream(produce, pipe)

    async def _stream(self, produce: Any, pipe: _Pipe) -> None:
        def run() -> None:
            try:
                produce()
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
                    if self._headers_written:
                        # Too late for an error status: cut the connection so the client
                        # sees a broken download, never a complete-looking short one.
                        log.error("download of %s failed midway: %s", self.request.path, item)
                        stream = self.request.connection.stream  # type: ignore[union-attr]
                        stream.close()
                        return
                    raise item
                self.write(item)
                pipe.room.release()
                await self.flush()
        finally:
            pipe.closed.set()
            try:
                pipe.room.release()  # wake a producer waiting for room: it sees closed
            except ValueError:
                pass
        self.finish()
