"""``restore USER --include PATH --target DIR``: one file or folder of a snapshot, put
into another folder, with restore's guarantees (staging, nothing followed, ``O_EXCL``)."""

from __future__ import annotations

import os
import threading
from typing import Any

from hometier.engine.export import PathNotFound, find, iter_content, split_path, write_tar
from hometier.engine.untar import unpack_tar
from hometier.errors import Conflict, UsageError
from hometier.repo import Repository
from hometier.repo.snapshot import Snapshot
from hometier.repo.tree import Node


class TargetExists(Conflict):
    """{} already exists: restore into another --target folder, or move it away first."""


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _restore_file(repo: Repository, n: Node, target: str) -> int:
    """One regular file (or symlink) into the folder ``target`` under its own name;
    created with ``O_EXCL``, holes skipped, then owner, ``user.*`` xattrs, mode, times."""
    os.makedirs(target, exist_ok=True)
    dfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if n.type == "symlink":
            try:
                os.symlink(n.target or b"", n.name, dir_fd=dfd)
            except FileExistsError:
                raise TargetExists(os.path.join(target, _name(n.name))) from None
            if os.geteuid() == 0:
                os.chown(n.name, n.uid, n.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(n.name, ns=(n.atime_ns, n.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            return 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(n.name, flags, 0o600, dir_fd=dfd)
        except FileExistsError:
            raise TargetExists(os.path.join(target, _name(n.name))) from None
        try:
            written = 0
            for chunk in iter_content(repo, n):
                if n.sparse is not None and chunk.count(0) == len(chunk):
                    os.lseek(fd, len(chunk), os.SEEK_CUR)
                else:
                    os.write(fd, chunk)
                written += len(chunk)
            os.ftruncate(fd, n.size)
            if os.geteuid() == 0:
                os.fchown(fd, n.uid, n.gid)
            for name, value in (n.xattrs or {}).items():
                if name.startswith(b"user."):
                    os.setxattr(fd, name, value)
            os.fchmod(fd, n.mode)
            os.utime(fd, ns=(n.atime_ns, n.mtime_ns))
        except BaseException:
            os.unlink(n.name, dir_fd=dfd)
            raise
        finally:
            os.close(fd)
        return written
    finally:
        os.close(dfd)


def restore_path(repo: Repository, snap: Snapshot, path: str, target: str) -> dict[str, Any]:
    """Restore the file or folder at ``path`` of ``snap`` into the folder ``target``, as
    ``target/<its name>``, which must not exist. A folder goes through the tar stream of
    ``export.write_tar`` into ``untar.unpack_tar``: staging, nothing followed, hardlinks
    inside it kept, one rename into place; a failure leaves nothing behind."""
    parts = split_path(path)
    if not parts:
        raise UsageError("--include needs a path inside the home (the whole home: no --include)")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UsageError(f"--target {target} is not a folder")
    node = find(repo, snap, path)
    dest = os.path.join(os.path.abspath(target), _name(parts[-1]))
    if node.type in ("file", "symlink"):
        written = _restore_file(repo, node, os.path.abspath(target))
        return {"path": _name(b"/".join(parts)), "target": dest, "files": 1, "bytes": written}
    if node.type != "dir":
        raise PathNotFound(f"file or folder {path}", snap.id[:12])
    if os.path.lexists(dest):
        raise TargetExists(dest)
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(wfd, "wb") as sink:
            try:
                write_tar(repo, snap, path, sink)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                failure.append(exc)

    writer = threading.Thread(target=produce, name="include-tar", daemon=True)
    writer.start()
    try:
        with os.fdopen(rfd, "rb") as source:
            stats = unpack_tar(source, dest)
            source.read()  # let the writer finish its trailer
    except BaseException:
        writer.join()
        # The writer's own error explains the reader's (a truncated stream); a broken
        # pipe only says that the reader gave up first.
        real = [f for f in failure if not isinstance(f, BrokenPipeError)]
        if real:
            raise real[0] from None
        raise
    writer.join()
    if failure:
        raise failure[0]
    return {
        "path": _name(b"/".join(parts)),
        "target": dest,
        "files": stats.files,
        "bytes": stats.bytes,
    }
