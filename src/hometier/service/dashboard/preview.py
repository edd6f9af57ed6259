"""A look at one file of a snapshot without downloading it: text and images, safely.

- Text: the first ``TEXT_CAP`` bytes, decoded as UTF-8 (undecodable bytes replaced) and
  escaped by the template: markup in a file is shown, never rendered.
- Images: PNG, JPEG, GIF and WebP only, recognized by their first bytes (never by the
  name, never SVG: an SVG is a document that can run script), at most ``IMAGE_CAP``
  bytes, served by ``PreviewImage`` with that exact ``Content-Type``, ``nosniff`` and a
  ``Content-Security-Policy`` that forbids everything (``sandbox``).
- Anything else: "no preview", and the download link.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from tornado import web

from hometier.engine.export import find, iter_content
from hometier.errors import UsageError
from hometier.service.dashboard.base import PageHandler, path_query

TEXT_CAP = 256 * 1024
IMAGE_CAP = 10 * 1024 * 1024
SNIFF = 16
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
IMAGE_CSP = "default-src 'none'; sandbox"


def sniff_image(head: bytes) -> str | None:
    """The image type of content starting with ``head``, or None."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def looks_like_text(head: bytes) -> bool:
    """No NUL byte and mostly decodable as UTF-8: shown as text."""
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", "replace")
    return text.count("\ufffd") <= max(2, len(text) // 100)


def _read(repo: Any, node: Any, cap: int) -> bytes:
    out = bytearray()
    for chunk in iter_content(repo, node):
        out += chunk
        if len(out) >= cap:
            break
    return bytes(out[:cap])


class _PreviewBase(PageHandler):
    def path_arg(self) -> bytes:
        b64 = self.get_query_argument("path_b64", None)
        if b64 is not None:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError("path_b64 is not base64") from None
        return os.fsencode(self.get_query_argument("path", "") or "")

    async def node(self, user: str, ref: str) -> tuple[Any, Any, bytes]:
        user = self.user_arg(user)
        self.identity().require("read", user)
        path = self.path_arg().strip(b"/")
        repo = self.ctx.lc.repo
        snap = await self.blocking(repo.find_snapshot, ref, user)
        node = await self.blocking(find, repo, snap, path)
        if node.type != "file" or node.error is not None:
            raise UsageError("that path is not a regular file in the snapshot")
        if node.link is not None:
            node = await self.blocking(find, repo, snap, node.link)
        return snap, node, path


class PreviewPage(_PreviewBase):
    """``/homes/USER/snapshots/ID/preview?path=…``: a page showing the file."""

    @web.authenticated
    async def get(self, user: str, ref: str) -> None:
        snap, node, path = await self.node(user, ref)
        repo = self.ctx.lc.repo
        head = await self.blocking(_read, repo, node, TEXT_CAP) if node.size else b""
        kind = "empty" if not head else "image" if sniff_image(head[:SNIFF]) else None
        if kind is None:
            kind = "text" if looks_like_text(head[:8192]) else "binary"
        where = path_query(path)
        api = ("api", "homes", snap.user, "snapshots", snap.id)
        parent = path.rsplit(b"/", 1)[0] if b"/" in path else b""
        self.render(
            "preview.html",
            user=snap.user,
            snap=snap,
            name=os.fsdecode(path.rsplit(b"/", 1)[-1]),
            size=node.size,
            kind=kind,
            text=head.decode("utf-8", "replace") if kind == "text" else "",
            truncated=node.size > TEXT_CAP,
            cap=TEXT_CAP,
            image_url=self.url("homes", snap.user, "snapshots", snap.id, "image", **where),
            image_too_big=node.size > IMAGE_CAP,
            download=self.url(*api, "file", **where),
            back=self.url(
                "homes",
                snap.user,
                "snapshots",
                snap.id,
                "browse",
                **(path_query(parent) if parent else {}),
            ),  # fmt: skip
        )


class PreviewImage(_PreviewBase):
    """``/homes/USER/snapshots/ID/image?path=…``: the bytes of an image, or 415."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", IMAGE_CSP)

    @web.authenticated
    async def get(self, user: str, ref: str) -> None:
        _snap, node, _path = await self.node(user, ref)
        if node.size > IMAGE_CAP:
            raise UsageError(f"images over {IMAGE_CAP // 2**20} MiB are not previewed")
        data = await self.blocking(_read, self.ctx.lc.repo, node, IMAGE_CAP)
        kind = sniff_image(data[:SNIFF])
        if kind is None:
            raise web.HTTPError(415, "not an image this preview shows (PNG, JPEG, GIF, WebP)")
        self.set_header("Content-Type", kind)
        self.set_header("Content-Disposition", "inline")
        self.set_header("Cache-Control", "private, max-age=300")
        self.finish(data)


__all__ = ["IMAGE_CAP", "TEXT_CAP", "PreviewImage", "PreviewPage", "sniff_image"]
