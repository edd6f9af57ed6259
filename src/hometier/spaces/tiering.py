"""Archive an idle space into its repository and bring it back: the homes' engine.

``active → archiving → archived → restoring → active`` (``failed``: a restore failed,
the space is still cold and the next restore tries again), each step an event.

Archiving closes the space's gate first (nobody but root may enter: the snapshot is
consistent), backs it up with the previous snapshot as parent, verifies the snapshot
and compares it with the folder, then moves the contents into root's private quarantine
on the same filesystem (``.hometier/quarantine/<key>.<snapshot>``) and leaves a notice in
the folder, which members may read but not write. Any failure moves everything back and
reopens the gate. Restoring takes the contents back from the quarantine when it still
holds that snapshot (instant), else from the repository (``engine.restore``), then
reapplies the current members: whoever joined or left while it was archived.

ACLs are kept by the engine where it records ``system.posix_acl_*`` attributes; where a
snapshot does not hold them, the restore writes the space's ACLs afresh (``sweep``), so
members never lose access, at the cost of ACLs a member set by hand.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime

from hometier.engine.archive import backup
from hometier.engine.fsutil import remove_tree, rename_noreplace
from hometier.engine.restore import restore
from hometier.engine.usedcache import summary_cache
from hometier.engine.verify import compare_tree, verify_snapshot
from hometier.errors import Conflict, Error
from hometier.repo.snapshot import Snapshot
from hometier.spaces import volume
from hometier.spaces.context import SpacesContext
from hometier.spaces.names import STATE_DIR
from hometier.spaces.sweep import open_beneath
from hometier.state import spaces as q
from hometier.state.spaces import Space

log = logging.getLogger(__name__)
NOTICE = "ARCHIVED-BY-HOMETIER.txt"
ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")


class ArchiveRefused(Conflict):
    """Space {} was not archived: {}"""


class SpaceInUse(Conflict):
    """Space {} is in use by {} running server(s); it is archived only when idle."""


@dataclass
class Outcome:
    space: str
    outcome: str
    snapshot: str | None = None
    bytes: int = 0
    files: int = 0
    source: str = ""


def _quarantine(sp: SpacesContext, *, create: bool = True) -> int:
    fd = open_beneath(sp.root_fd, STATE_DIR)
    try:
        if create:
            try:
                os.mkdir("quarantine", 0o700, dir_fd=fd)
            except FileExistsError:
                pass
        return os.open("quarantine", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def _move_all(src_fd: int, dst_fd: int, skip: tuple[str, ...] = ()) -> int:
    moved = 0
    for name in sorted(os.listdir(src_fd)):
        if name in skip:
            continue
        rename_noreplace(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        moved += 1
    return moved


def _write_notice(fd: int, when: datetime) -> None:
    text = (
        f"This space was archived on {when:%Y-%m-%d} because nobody used it.\n"
        "Its files come back when a member's server starts, or with Restore on the\n"
        "hometier dashboard.\n"
    ).encode()
    nfd = os.open(NOTICE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444, dir_fd=fd)
    try:
        os.write(nfd, text)
    finally:
        os.close(nfd)


def _remove_notice(fd: int) -> None:
    try:
        os.unlink(NOTICE, dir_fd=fd)
    except FileNotFoundError:
        pass


def latest(sp: SpacesContext, space: Space) -> Snapshot | None:
    snaps = sp.repository(space).list_snapshots(space.key)
    complete = [s for s in snaps if s.stats.complete]
    return complete[-1] if complete else None


def archive_space(sp: SpacesContext, space: Space, *, actor: str, running: int = 0) -> Outcome:
    """Archive ``space`` now (see the module docstring). ``running``: servers of its
    members that are up (the caller asked the Hub); more than none refuses."""
    if running:
        raise SpaceInUse(space.name, running)
    repo = sp.repository(space)
    with volume.space_lock(sp, space, timeout=0):
        space = q.transition(sp.db, space.id, ("active",), "archiving", actor, sp.now())
        path = volume.space_path(sp, space)
        moved_to = -1
        fd = volume.open_space(sp, space)
        try:
            volume.close_gate(sp, space)
            parent = latest(sp, space)
            snap = backup(repo, path, user=space.key, parent=parent, workers=sp.workers)
            if not snap.stats.complete or snap.stats.changed:
                raise ArchiveRefused(space.name, "files could not be read or changed meanwhile")
            trees = verify_snapshot(repo, snap, workers=sp.workers, summaries=summary_cache(repo))
            cmp = compare_tree(trees, snap, path)
            if not cmp.same:
                first = cmp.differences[0]
                raise ArchiveRefused(space.name, f"{first.path} {first.what} during the archive")
            qfd = _quarantine(sp)
            try:
                name = f"{space.key}.{snap.id[:12]}"
                os.mkdir(name, 0o700, dir_fd=qfd)
                moved_to = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=qfd)
            finally:
                os.close(qfd)
            _move_all(fd, moved_to)
            now = sp.now()
            q.record_snapshot(
                sp.db,
                space.id,
                snapshot_id=snap.id,
                time=snap.time,
                files=snap.stats.files,
                bytes=snap.stats.bytes,
                stored_bytes=snap.stats.bytes_new_stored,
                now=now,
            )
            space = q.transition(
                sp.db, space.id, ("archiving",), "archived", actor, now, archived_at=now
            )
        except BaseException as exc:
            if moved_to >= 0:
                _move_all(moved_to, fd)
            q.transition(
                sp.db,
                space.id,
                ("archiving",),
                "active",
                actor,
                sp.now(),
                error=str(exc.get_message() if isinstance(exc, Error) else exc)[:1000],
            )
            raise
        finally:
            if moved_to >= 0:
                os.close(moved_to)
            os.close(fd)
        # Members may read the notice while it is archived (grants() makes it read-only);
        # written after the gate reopens, it inherits the members' default ACL.
        volume.apply(sp, space, q.access(sp.db, space.id), gate_only=True)
        fd = volume.open_space(sp, space)
        try:
            _write_notice(fd, now)
        finally:
            os.close(fd)
    log.info("space %s archived as %s", space.name, snap.id[:12])
    return Outcome(space.name, "archived", snap.id, snap.stats.bytes, snap.stats.files)


def restore_space(sp: SpacesContext, space: Space, *, actor: str) -> Outcome:
    """Bring an archived space back (see the module docstring); a space that is active
    already is left as it is."""
    if space.state == "active":
        return Outcome(space.name, "active")
    with volume.space_lock(sp, space):
        space = q.get_space_by_id(sp.db, space.id)
        if space.state == "active":
            return Outcome(space.name, "active")
        space = q.transition(sp.db, space.id, ("archived", "failed"), "restoring", actor, sp.now())
        fd = volume.open_space(sp, space, create=True)
        try:
            volume.close_gate(sp, space)
            _remove_notice(fd)
            snap = latest(sp, space)
            if snap is None:
                raise ArchiveRefused(space.name, "it has no snapshot to restore")
            source, sweep_all = "quarantine", False
            qfd = _quarantine(sp)
            try:
                name = f"{space.key}.{snap.id[:12]}"
                try:
                    held = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=qfd)
                except FileNotFoundError:
                    held = -1
                if held >= 0:
                    try:
                        _move_all(held, fd)
                    finally:
                        os.close(held)
                    os.rmdir(name, dir_fd=qfd)
            finally:
                os.close(qfd)
            if held < 0:
                source = "repository"
                restore(
                    sp.repository(space),
                    snap,
                    volume.space_path(sp, space),
                    workers=sp.workers,
                    merge=True,
                )
                sweep_all = not any(k in snap.root_xattrs for k in ACL_NAMES)
            now = sp.now()
            space = q.transition(
                sp.db,
                space.id,
                ("restoring",),
                "active",
                actor,
                now,
                restored_at=now,
                last_activity=now,
                error=None,
            )
        except BaseException as exc:
            q.transition(
                sp.db,
                space.id,
                ("restoring",),
                "failed",
                actor,
                sp.now(),
                error=str(exc.get_message() if isinstance(exc, Error) else exc)[:1000],
            )
            space = q.get_space_by_id(sp.db, space.id)
            volume.apply(sp, space, q.access(sp.db, space.id), gate_only=True)
            raise
        finally:
            os.close(fd)
        access = q.access(sp.db, space.id)
        stale = space.applied_version < space.members_version
        volume.apply(sp, space, access, gate_only=not (sweep_all or stale))
    log.info("space %s restored from the %s", space.name, source)
    return Outcome(space.name, "restored", snap.id, snap.stats.bytes, snap.stats.files, source)


def purge_quarantine(sp: SpacesContext) -> list[str]:
    """Remove quarantined contents of spaces archived longer than ``quarantine_for``,
    and trashed folders of deleted spaces as old."""
    now = sp.now()
    keep: set[str] = set()
    for space in q.list_spaces(sp.db):
        young = space.archived_at is not None and now - space.archived_at < sp.quarantine_for
        if space.state != "archived" or young:
            keep.add(space.key)
    removed = []
    for folder in ("quarantine", "trash"):
        try:
            fd = open_beneath(sp.root_fd, f"{STATE_DIR}/{folder}")
        except FileNotFoundError:
            continue
        try:
            for name in os.listdir(fd):
                key, _, stamp = name.partition(".")
                if folder == "quarantine" and key in keep:
                    continue
                if folder == "trash" and not _old(stamp, now, sp):
                    continue
                remove_tree(name, fd)
                removed.append(f"{folder}/{name}")
        finally:
            os.close(fd)
    return removed


def _old(stamp: str, now: datetime, sp: SpacesContext) -> bool:
    try:
        when = datetime.fromisoformat(stamp.replace("_", ":"))
    except ValueError:
        return True
    return now - when >= sp.quarantine_for


def idle_spaces(sp: SpacesContext, running_users: frozenset[str] | None) -> list[Space]:
    """Spaces to archive now: active, archivable, not exempt, unchanged and unmounted for
    ``inactive_after``. Without the Hub's view of running servers, none."""
    if sp.inactive_after is None or running_users is None:
        return []
    now = sp.now()
    out = []
    for space in q.list_spaces(sp.db):
        if space.state != "active" or space.exempt or not sp.can_archive(space):
            continue
        if space.last_activity and now - space.last_activity < sp.inactive_after:
            continue
        users = set(q.access(sp.db, space.id))
        if running_users & users or (space.level == "public" and running_users):
            continue
        out.append(space)
    return out


def run_tiering(sp: SpacesContext) -> list[Outcome]:
    out = []
    running = None
    if sp.inactive_after is not None and sp.hub is not None:
        try:
            running = sp.hub.view().running
        except Error as exc:
            log.warning("spaces: not archiving this round: %s", exc.get_message())
    for space in idle_spaces(sp, running):
        try:
            out.append(archive_space(sp, space, actor=sp.actor))
        except Error as exc:
            log.warning("spaces: %s not archived: %s", space.name, exc.get_message())
    purge_quarantine(sp)
    return out
