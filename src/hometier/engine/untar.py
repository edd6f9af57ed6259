"""``unpack_tar``: unpack a home sent as a PAX tar stream (``export.write_tar``) into an
empty or absent folder, with restore's guarantees: staging beside or inside the target,
every call relative to the staging folder's descriptor, nothing followed, metadata last,
then one move into place; a failure leaves the target as it was.

Nanosecond times come from the PAX ``mtime``/``atime`` records, extended attributes
(``user.*``, ACLs, capabilities, ``trusted.*``) from ``SCHILY.xattr.*`` (or
``LIBARCHIVE.xattr.*``, base64), and runs of zeros are skipped
with ``lseek`` so sparse files stay sparse.
"""

from __future__ import annotations

import base64
import builtins
import logging
import os
import secrets
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO

from hometier.engine.fsutil import remove_tree, rename_noreplace
from hometier.engine.restore import (
    _DIR,
    STAGING_PREFIX,
    RestoreError,
    _check_target,
    _clean_stale,
    _describe,
    _open_staging,
    _set_meta,
)
from hometier.engine.xattrs import apply_metadata
from hometier.errors import Error, IntegrityError
from hometier.repo.tree import Node, valid_name

log = logging.getLogger(__name__)

BLOCK = 1024 * 1024
PAGE = 4096
_ZERO = bytes(BLOCK)


@dataclass
class UnpackStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    def note(self, rel: builtins.bytes, lost: list[str]) -> None:
        """Attributes that could not be put back (listed, never dropped silently)."""
        for what in lost:
            if len(self.skipped) < 200:
                self.skipped.append(f"{os.fsdecode(rel) or '.'}: {what} (not restored)")


def _ns(pax: Mapping[str, str], key: str, fallback: float) -> int:
    raw = pax.get(key)
    if raw is None:
        return int(fallback * 1_000_000_000)
    try:
        return int(Decimal(raw) * 1_000_000_000)
    except InvalidOperation:
        raise IntegrityError(f"bad {key} record {raw!r}") from None


def _node(info: tarfile.TarInfo, name: bytes) -> Node:
    pax = info.pax_headers
    xattrs: dict[bytes, bytes] = {}
    for key, value in pax.items():
        if key.startswith("SCHILY.xattr."):
            xattrs[key[len("SCHILY.xattr.") :].encode()] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            xattrs[key[len("LIBARCHIVE.xattr.") :].encode()] = base64.b64decode(value)
    kind = {
        tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "symlink",
        tarfile.FIFOTYPE: "fifo",
        tarfile.CHRTYPE: "chr",
        tarfile.BLKTYPE: "blk",
    }.get(info.type, "file")
    return Node(
        name=name,
        type=kind,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime_ns=_ns(pax, "mtime", info.mtime),
        atime_ns=_ns(pax, "atime", info.mtime),
        size=info.size,
        xattrs=xattrs or None,
        target=os.fsencode(info.linkname) if info.issym() else None,
        rdev=(info.devmajor, info.devminor) if kind in ("chr", "blk") else None,
    )


def _rel(name: str) -> bytes:
    """A member name as a safe relative path; ``b""`` for the top folder itself."""
    raw = os.fsencode(name)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if raw.startswith(b"/") or not all(valid_name(p) for p in parts):
        raise IntegrityError(f"unsafe member name {name[:100]!r} in the stream")
    return b"/".join(parts)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _write_sparse(fd: int, src: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        block = src.read(min(BLOCK, left))
        if not block:
            raise IntegrityError("the stream ended inside a file")
        if block == _ZERO[: len(block)]:
            os.lseek(fd, len(block), os.SEEK_CUR)
        elif block.find(_ZERO[:PAGE]) < 0:
            _write_all(fd, memoryview(block))
        else:
            # Some whole pages of zeros: skip those, write the rest.
            view = memoryview(block)
            for at in range(0, len(block), PAGE):
                page = view[at : at + PAGE]
                if page == _ZERO[: len(page)]:
                    os.lseek(fd, len(page), os.SEEK_CUR)
                else:
                    _write_all(fd, page)
        left -= len(block)
    os.ftruncate(fd, size)


def unpack_tar(stream: IO[bytes], target: str | os.PathLike[str]) -> UnpackStats:
    """Unpack a PAX tar stream into ``target`` (absent or empty); ``RestoreError``."""
    tgt = os.fsencode(os.path.abspath(target))
    exists = _check_target(tgt, merge=False, ignore=(b"lost+found",))
    if exists:
        parent_fd, prefix = os.open(tgt, _DIR), STAGING_PREFIX.encode()
    else:
        parent, name = os.path.split(tgt)
        os.makedirs(parent, exist_ok=True)
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        prefix = STAGING_PREFIX.encode() + name[:128] + b"-"
    staging = prefix + secrets.token_hex(4).encode()
    as_root = os.geteuid() == 0
    stats = UnpackStats()
    sfd = -1
    try:
        _clean_stale(parent_fd, prefix)
        sfd = _open_staging(parent_fd, staging)
        try:
            root = _unpack(stream, sfd, stats, as_root)
            if exists:
                for child in sorted(map(os.fsencode, os.listdir(sfd))):
                    try:
                        rename_noreplace(child, child, src_dir_fd=sfd, dst_dir_fd=parent_fd)
                    except FileExistsError:
                        if child != b"lost+found":  # the volume's own, kept
                            raise
                        remove_tree(child, sfd)
                os.rmdir(staging, dir_fd=parent_fd)
                meta_fd = parent_fd
            else:
                rename_noreplace(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                meta_fd = sfd
            if root is not None:
                stats.note(
                    b"",
                    apply_metadata(
                        meta_fd,
                        mode=root.mode,
                        uid=root.uid,
                        gid=root.gid,
                        xattrs=root.xattrs,
                        times=(root.atime_ns, root.mtime_ns),
                        as_root=as_root,
                    ),
                )
        except BaseException as exc:
            remove_tree(staging, parent_fd)
            if isinstance(exc, KeyboardInterrupt):
                raise
            detail = exc.get_message() if isinstance(exc, Error) else _describe(exc)
            raise RestoreError("stream", os.fsdecode(tgt), detail) from exc
    finally:
        if sfd >= 0:
            os.close(sfd)
        os.close(parent_fd)
    return stats


def _unpack(stream: IO[bytes], sfd: int, stats: UnpackStats, as_root: bool) -> Node | None:
    dirs: list[tuple[bytes, Node]] = []
    made: set[bytes] = {b""}
    linkable: set[bytes] = set()
    root: Node | None = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as exc:
        raise IntegrityError(f"not a tar stream: {exc}") from exc
    with tar:
        for info in tar:
            rel = _rel(info.name)
            node = _node(info, rel.rsplit(b"/", 1)[-1])
            if not rel:
                if node.type == "dir":
                    root = node
                continue
            parent = rel.rsplit(b"/", 1)[0] if b"/" in rel else b""
            if parent not in made:
                raise IntegrityError(
                    f"{os.fsdecode(rel)} comes before its folder, or through a link"
                )
            if node.type == "dir":
                os.mkdir(rel, 0o700, dir_fd=sfd)
                made.add(rel)
                dirs.append((rel, node))
                stats.dirs += 1
                continue
            if info.islnk():
                first = _rel(info.linkname)
                if first not in linkable:
                    raise IntegrityError(f"hardlink {os.fsdecode(rel)} names an unknown file")
                os.link(first, rel, src_dir_fd=sfd, dst_dir_fd=sfd, follow_symlinks=False)
                stats.files += 1
                continue
            if node.type == "file":
                fd = os.open(
                    rel,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=sfd,
                )
                try:
                    src = tar.extractfile(info)
                    assert src is not None
                    _write_sparse(fd, src, info.size)
                finally:
                    os.close(fd)
                stats.files += 1
                stats.bytes += info.size
            elif node.type == "symlink":
                os.symlink(node.target or b"", rel, dir_fd=sfd)
                stats.note(rel, _set_meta(sfd, rel, node, as_root=as_root, symlink=True))
                continue
            else:
                kind = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK}[node.type]
                try:
                    os.mknod(
                        rel, 0o600 | kind, os.makedev(*node.rdev) if node.rdev else 0, dir_fd=sfd
                    )
                except PermissionError:
                    stats.skipped.append(f"{os.fsdecode(rel)}: device nodes need root")
                    continue
            stats.note(rel, _set_meta(sfd, rel, node, as_root=as_root))
            linkable.add(rel)
    for rel, node in reversed(dirs):
        stats.note(rel, _set_meta(sfd, rel, node, as_root=as_root))
    return root
