"""A space on the volume: its folder, its group, its grants; per-space locks.

``apply`` is the one way the volume is made to say who may do what: the folder (created
if missing), its POSIX group and members, the gate ACL on the folder itself first (so a
revocation takes effect at once, whatever the size of the space), then every entry
inside (``sweep``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from hometier.engine.fsutil import rename_noreplace
from hometier.errors import Conflict
from hometier.spaces import posix
from hometier.spaces.acl import Grants
from hometier.spaces.context import SpacesContext
from hometier.spaces.names import STATE_DIR, group_name
from hometier.spaces.sweep import SweepStats, open_beneath, set_top, sweep
from hometier.state.spaces import Space

log = logging.getLogger(__name__)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SpaceBusy(Conflict):
    """Space {} is busy (being archived, restored or re-permissioned); try again shortly."""


@dataclass
class Applied:
    stats: SweepStats = field(default_factory=SweepStats)
    missing: list[str] = field(default_factory=list)
    """Members with no system account (uids identity): they can have no access."""


def grants(sp: SpacesContext, space: Space, access: Mapping[str, str]) -> tuple[Grants, list[str]]:
    """What the volume must say for ``access`` (user → role) in this space."""
    public = space.level == "public"
    missing: list[str] = []
    if sp.identity == "container":
        # Every server is the same uid: the space's gid (a supplemental group of the pods
        # that mount it) opens it; whether a mount is read-only is the real boundary.
        if any(r == "writer" for r in access.values()):
            g = Grants(group_writers=frozenset({space.gid}), everyone_reads=public)
        else:
            g = Grants(group_readers=frozenset({space.gid}), everyone_reads=public)
    else:
        writers, readers = set(), set()
        for user, role in sorted(access.items()):
            uid = sp.users.uid(user)
            if uid is None:
                missing.append(user)
            elif role == "writer":
                writers.add(uid)
            else:
                readers.add(uid)
        g = Grants(frozenset(writers), frozenset(readers), everyone_reads=public)
    # Over its quota, or archived (only the notice is there): nobody writes.
    return (g.readonly() if space.over_quota or space.state == "archived" else g), missing


def open_space(sp: SpacesContext, space: Space, *, create: bool = False) -> int:
    """The space's folder, opened beneath the spaces root without following links."""
    parent_rel, _, name = space.path.rpartition("/")
    parent = open_beneath(sp.root_fd, parent_rel) if parent_rel else os.dup(sp.root_fd)
    try:
        if create:
            try:
                os.mkdir(name, 0o2700, dir_fd=parent)
            except FileExistsError:
                pass
        return os.open(name, _DIR, dir_fd=parent)
    finally:
        os.close(parent)


def space_path(sp: SpacesContext, space: Space) -> str:
    return os.path.join(str(sp.root), space.path)


@contextlib.contextmanager
def space_lock(sp: SpacesContext, space: Space, timeout: float = 600.0) -> Iterator[None]:
    """A ``flock`` per space in the root's private state folder: one process at a time
    changes a space's files or ACLs (the archiver, a reconcile, a restore)."""
    fd = open_beneath(sp.root_fd, STATE_DIR)
    try:
        try:
            os.mkdir("locks", 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        lfd = os.open(
            f"locks/{space.key}",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=fd,
        )
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SpaceBusy(space.name) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(lfd)


def sync_group(sp: SpacesContext, space: Space, access: Mapping[str, str]) -> None:
    if sp.identity != "uids" or not sp.manage_groups:
        return
    name = group_name(sp.group_prefix, space.gid)
    posix.ensure_group(name, space.gid)
    # /etc/group is world-readable: a secret space's group names nobody.
    members = (
        []
        if space.level == "secret"
        else sorted(sp.users.system_name(u) for u in access if sp.users.uid(u) is not None)
    )
    posix.set_group_members(name, members)


def apply(
    sp: SpacesContext,
    space: Space,
    access: Mapping[str, str],
    *,
    disown: frozenset[str] = frozenset(),
    gate_only: bool = False,
) -> Applied:
    """Make the volume say ``access`` for ``space`` (see the module docstring).

    ``disown``: users who lost write access; files they own in the space go to root.
    ``gate_only``: only the folder itself (while the space is being archived or
    restored, its contents belong to that operation).
    """
    out = Applied()
    g, out.missing = grants(sp, space, access)
    sync_group(sp, space, access)
    fd = open_space(sp, space, create=True)
    try:
        set_top(fd, g, space.gid, public=space.level == "public")
        if not gate_only:
            uids = frozenset(u for u in (sp.users.uid(x) for x in disown) if u is not None)
            out.stats = sweep(fd, g, disown=uids if sp.identity == "uids" else frozenset())
    finally:
        os.close(fd)
    return out


def close_gate(sp: SpacesContext, space: Space) -> None:
    """Nobody but root may enter the space (while it is archived or restored)."""
    fd = open_space(sp, space, create=True)
    try:
        set_top(fd, Grants(), space.gid, public=False)
    finally:
        os.close(fd)


def measure(sp: SpacesContext, space: Space) -> SweepStats:
    fd = open_space(sp, space, create=True)
    try:
        return sweep(fd, None)
    finally:
        os.close(fd)


def move_folder(sp: SpacesContext, old: str, new: str) -> None:
    """Rename a space's folder (a change of level to or from secret), never replacing."""
    (op, _, on), (np_, _, nn) = old.rpartition("/"), new.rpartition("/")
    ofd = open_beneath(sp.root_fd, op) if op else os.dup(sp.root_fd)
    try:
        nfd = open_beneath(sp.root_fd, np_) if np_ else os.dup(sp.root_fd)
        try:
            rename_noreplace(on, nn, src_dir_fd=ofd, dst_dir_fd=nfd)
        finally:
            os.close(nfd)
    finally:
        os.close(ofd)


def trash_folder(sp: SpacesContext, space: Space, stamp: str) -> str | None:
    """Move a deleted space's folder into root's private trash; its name there."""
    fd = open_beneath(sp.root_fd, STATE_DIR)
    try:
        try:
            os.mkdir("trash", 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        name = f"{space.key}.{stamp}"
        try:
            move_folder(sp, space.path, f"{STATE_DIR}/trash/{name}")
        except FileNotFoundError:
            return None
        return name
    finally:
        os.close(fd)


def remove_group(sp: SpacesContext, space: Space) -> None:
    if sp.identity == "uids" and sp.manage_groups:
        posix.delete_group(group_name(sp.group_prefix, space.gid))


def allocate_gid(sp: SpacesContext, taken: set[int]) -> int:
    low, high = sp.gid_range
    for gid in range(low, high + 1):
        if gid in taken:
            continue
        if sp.identity == "uids" and posix.gid_taken(gid):
            continue
        return gid
    raise Conflict(f"no free gid left in c.Spaces.gid_range {low}-{high}")
