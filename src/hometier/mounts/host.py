"""The mounts of one host, as the kernel holds them (no database here).

Layout under ``c.Mounts.root`` (root-owned, 0700, a private mount of its own so that
nothing below it leaks into other mount namespaces)::

    fs/<key>.<gen>     where the s3fs daemon of generation <gen> mounts
    shared/<key>       the *anchor*: a bind of the daemon's mount, made shared
    servers/<u>/<s>/<name>   consumers of servers that run elsewhere (containers)
    run/               daemon logs, the daemons' private HOME

A *consumer* (one per server) is a bind of the anchor, made a slave of it, read-only
where the server may only read. When a daemon dies, a new generation mounts at
``fs/<key>.<gen+1>`` and is bound *on top of* the anchor: the kernel propagates that
mount to every slave, so each consumer shows the new mount in place, in whatever mount
namespace it lives (a container bound with ``rslave`` too), and no server restarts.
The dead mount stays covered below until the last consumer goes.

Unmounting is never lazy here (except for a dead daemon's own mount point, which no one
can use): a mount that is in use answers EBUSY, which the caller reports and retries.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hometier.errors import Error
from hometier.mounts import syscalls as sc
from hometier.mounts.mountinfo import MountEntry, MountTable
from hometier.mounts.probe import users_of

KEY_LEN = 24


class Busy(Error):
    """{} is in use and was not unmounted: {}"""

    exit_code = 4
    http_status = 409


class TargetRefused(Error):
    """The mount path {} cannot be used: {}"""

    exit_code = 2
    http_status = 409


class NotRoot(Error):
    """Mounting bucket folders needs root (and /dev/fuse); hometier runs as uid {}."""

    exit_code = 2
    http_status = 503


@dataclass(frozen=True)
class Target:
    """Where a consumer goes: ``parts`` below the folder ``base`` (a home, or the
    servers folder), which is reached without following any symlink."""

    base: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.parts)


class HostLayout:
    """The folders under the mounts root, and the kernel operations on them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.fs = self.root / "fs"
        self.anchors = self.root / "shared"
        self.servers = self.root / "servers"
        self.run = self.root / "run"

    def prepare(self) -> None:
        """Create the folders and make the root a private mount (idempotent)."""
        if os.geteuid() != 0:
            raise NotRoot(os.geteuid())
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two processes preparing at once would stack two binds of the root, one hiding
        # the other's mounts: a lock on a file in it (the same inode before and after).
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for d in (self.root, self.fs, self.anchors, self.servers, self.run):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = d.lstat()
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                    raise TargetRefused(d, "not a root-owned folder")
                os.chmod(d, 0o700)
            if not MountTable.read().stack(self.root):
                sc.bind(self.root, self.root)
            top = MountTable.read().top(self.root)
            if top is not None and (top.shared or top.slave):
                sc.make(self.root, sc.MS_PRIVATE)
        finally:
            os.close(fd)

    # --- names ---------------------------------------------------------------------

    def point(self, key: str, generation: int) -> Path:
        return self.fs / f"{key[:KEY_LEN]}.{generation}"

    def points(self, key: str) -> list[Path]:
        prefix = key[:KEY_LEN] + "."
        with contextlib.suppress(FileNotFoundError):
            return sorted(p for p in self.fs.iterdir() if p.name.startswith(prefix))
        return []

    def anchor(self, key: str) -> Path:
        return self.anchors / key[:KEY_LEN]

    def log(self, key: str, generation: int) -> Path:
        return self.run / f"{key[:KEY_LEN]}.{generation}.log"

    # --- the anchor ----------------------------------------------------------------

    def publish(self, key: str, point: Path) -> MountEntry:
        """Bind the daemon's mount at ``point`` on the anchor: the first time, a new
        shared mount; after a recovery, on top of the dead one (propagating to every
        consumer). Returns the anchor's new top mount."""
        anchor = self.anchor(key)
        with contextlib.suppress(FileExistsError):  # exists, maybe as a dead mount
            os.mkdir(anchor, 0o700)
        sc.bind(point, anchor)
        top = MountTable.read().top(anchor)
        assert top is not None
        if not top.shared:
            sc.make(anchor, sc.MS_SHARED)
            top = MountTable.read().top(anchor)
            assert top is not None
        return top

    def anchor_stack(self, key: str, table: MountTable | None = None) -> list[MountEntry]:
        return (table or MountTable.read()).stack(self.anchor(key))

    # --- consumers -----------------------------------------------------------------

    @contextlib.contextmanager
    def _parent(self, target: Target, create_as: tuple[int, int] | None) -> Iterator[int]:
        base = sc.open_home(target.base)
        try:
            fd = sc.open_dir(base, list(target.parts[:-1]), create_as=create_as)
        finally:
            os.close(base)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _open_target(self, target: Target, owner: tuple[int, int]) -> Iterator[tuple[int, int]]:
        """``(parent, folder)`` descriptors of an empty folder where nothing is mounted,
        made as ``owner`` if missing; ``TargetRefused`` otherwise."""
        try:
            with self._parent(target, owner) as parent:
                fd = sc.open_dir(parent, [target.parts[-1]], create_as=owner)
                try:
                    if sc.fd_mount_id(fd) != sc.fd_mount_id(parent):
                        raise TargetRefused(target.path, "something is already mounted there")
                    self._refuse_files(parent, target.parts[-1], target)
                    yield parent, fd
                finally:
                    os.close(fd)
        except OSError as exc:
            # A symlink on the way (ELOOP, ENOTDIR), a file in the place of a folder...
            raise TargetRefused(target.path, exc.strerror or str(exc)) from exc

    def check_target(self, target: Target, owner: tuple[int, int]) -> None:
        """Refuse a target before anything is mounted for it (see ``attach``)."""
        with self._open_target(target, owner):
            pass

    def attach(self, key: str, target: Target, *, read_only: bool, owner: tuple[int, int]) -> int:
        """Bind the anchor at ``target`` as a slave (read-only if asked); the folders on
        the way are made as ``owner``. Returns the consumer's mount id."""
        anchor = self.anchor(key)
        name = target.parts[-1]
        with self._open_target(target, owner) as (parent, fd):
            under = sc.fd_mount_id(fd)
            sc.bind(anchor, sc.fd_path(fd))
            # Reached again by name: the lookup now lands on the new mount's root.
            cfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                mount_id = sc.fd_mount_id(cfd)
                table = MountTable.read()
                entry, anchor_top = table.get(mount_id), table.top(anchor)
                if (
                    mount_id == under
                    or entry is None
                    or anchor_top is None
                    or entry.dev != anchor_top.dev
                ):
                    raise TargetRefused(target.path, "it changed while being mounted")
                sc.make(sc.fd_path(cfd), sc.MS_SLAVE)
                if read_only:
                    sc.remount_read_only(sc.fd_path(cfd))
                return mount_id
            finally:
                os.close(cfd)

    @staticmethod
    def _refuse_files(parent: int, name: str, target: Target) -> None:
        # Mounting over a folder would hide what it holds; the user would think it lost.
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            if os.listdir(fd):
                raise TargetRefused(target.path, "it holds files; move them elsewhere first")
        finally:
            os.close(fd)

    def detach(self, target: Target, mount_id: int, *, devs: set[tuple[int, int]]) -> bool:
        """Unmount the consumer ``mount_id`` and whatever recoveries stacked on it, top
        first. False if it was already gone; ``Busy`` (nothing changed above the busy
        layer) if a process uses it or its path cannot be reached safely.

        The kernel says where the mount is now (its owner may have renamed a folder on
        the way); that place is reached from ``target.base`` one component at a time
        without following symlinks, checked to be the mount by its id, and unmounted by
        the parent's descriptor and the name (not followed): a mount point cannot be
        renamed or replaced while it is mounted.
        """
        if not self._consumer_layers(mount_id):
            return False
        for _ in range(20):
            layers = self._consumer_layers(mount_id)
            if not layers:
                return True
            table = MountTable.read()
            base = table.get(mount_id)
            assert base is not None
            top = ([base, *table.above(base)])[-1]
            try:
                rel = Path(top.mount_point).relative_to(target.base)
            except ValueError:
                raise Busy(target.path, f"it was moved out of {target.base}") from None
            if not rel.parts:
                raise Busy(target.path, "it is mounted on its base folder itself")
            here = Target(target.base, rel.parts)
            try:
                with self._parent(here, None) as parent:
                    name = here.parts[-1]
                    cfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
                    try:
                        current = sc.fd_mount_id(cfd)
                    finally:
                        os.close(cfd)  # a descriptor on the mount would make it busy
                    if current != top.mount_id:
                        continue  # moved meanwhile: ask the kernel again
                    try:
                        sc.umount(f"{sc.fd_path(parent)}/{name}", nofollow=True)
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise
                        users = users_of(layers, devs, [str(here.path)])
                        shown = ", ".join(map(str, users[:5])) or "a process"
                        raise Busy(here.path, shown) from exc
            except Busy:
                raise
            except OSError:
                continue  # a symlink or a missing folder on the way, for now: look again
        raise Busy(target.path, "its path kept changing while it was being unmounted")

    def _consumer_layers(self, mount_id: int) -> set[int]:
        table = MountTable.read()
        base = table.get(mount_id)
        if base is None:
            return set()
        return {base.mount_id, *(e.mount_id for e in table.above(base))}

    # --- the daemon's mount and the anchor -----------------------------------------

    def unmount_stack(self, path: Path, label: str, devs: set[tuple[int, int]]) -> None:
        """Unmount every mount at ``path`` (root-owned: a path string is safe), top
        first; ``Busy`` if one is in use."""
        while True:
            stack = MountTable.read().stack(path)
            if not stack:
                return
            try:
                sc.umount(path)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    users = users_of([e.mount_id for e in stack], devs, [str(path)])
                    raise Busy(label, ", ".join(map(str, users[:5])) or "a process") from exc
                if exc.errno in (errno.EINVAL, errno.ENOENT):
                    return
                raise

    def drop_dead(self, point: Path) -> None:
        """Lazily unmount a dead daemon's own mount point and remove it."""
        for _ in MountTable.read().stack(point):
            with contextlib.suppress(OSError):
                sc.umount(point, detach=True)
        with contextlib.suppress(OSError):
            point.rmdir()


__all__ = ["Busy", "HostLayout", "NotRoot", "Target", "TargetRefused"]
