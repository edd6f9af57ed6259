"""Put a home's files back in place: from its quarantine, or from a restore of the bucket.

Either way a complete folder is made in the private quarantine first — the quarantined
home itself, or ``engine.restore`` into ``<key>.<snapshot:12>.r`` — and swapped
with the stand-in at the home's place in one rename (``moves.swap_into_place``). What
the user made in the stand-in meanwhile is merged in (their newer entries keep their
names; the archived ones go to a conflicts folder). The snapshot's root attributes are
applied to the home last: a home restored into a missing folder gets its owner, 0700
and ACLs back, never root's 0755.

A quarantine that no longer is exactly its snapshot (a process kept writing into a
file across the move, or something was deleted) is still the newest copy of the user's
files: it is put back as it is, and only what differs is fetched from the bucket —
missing entries into their place, the snapshot's version of changed ones into the
conflicts folder — instead of the whole snapshot. Recorded as an intent so that a
restore taken over after a crash continues where the dead one stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hometier.engine import restore
from hometier.engine.fsutil import open_beneath, open_dir, remove_tree, rename_noreplace
from hometier.engine.restore import ProgressFn, apply_root_meta, make_conflicts_dir
from hometier.engine.trees import TreeCache
from hometier.engine.verify import compare_tree
from hometier.errors import Error
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.moves import (
    Moved,
    Quarantine,
    is_our_notice,
    merge_leftovers,
    open_home_parent,
    remove_stand_in,
    spare_name,
    swap_into_place,
)
from hometier.repo.snapshot import Snapshot, local_key
from hometier.state.models import Home

log = logging.getLogger(__name__)

BUILD = ".r"
"""Suffix of a whole restore from the bucket built in the quarantine."""
PART = ".rx"
"""Suffix of a partial one: what a changed quarantine lacks."""
REPAIR_LIMIT = 10_000
"""A quarantine differing from its snapshot in more places than this is put back as it
is (it is the newest copy), and the differences are only reported."""


@dataclass
class RestoreResult:
    user: str
    outcome: str
    """``restored`` (this call did it), ``joined`` (another did), ``active`` (nothing
    to do: the files are on the volume)."""
    snapshot: str | None = None
    source: str = ""
    """``bucket`` or ``quarantine``."""
    seconds: float = 0.0
    bytes: int = 0
    files: int = 0
    conflicts: list[str] = field(default_factory=list)
    conflicts_dir: str | None = None


class HomeNotAFolder(Error):
    """The home {} is not a real folder (a symbolic link or a file): refusing to restore
    through it; an administrator must look at it."""

    exit_code = 8
    http_status = 409


def bring_back(
    lc: Lifecycle, home: Home, snap: Snapshot, progress: ProgressFn | None, result: RestoreResult
) -> None:
    """Make the home hold ``snap`` again (under the home's lock); fills ``result``'s
    ``source``, ``conflicts`` and ``conflicts_dir``."""
    user = home.user
    key = local_key(user)
    with Quarantine(lc.quarantine_root) as q:
        parent_fd, name = open_home_parent(lc.layout, user)
        try:
            _check_folder(parent_fd, name, lc.layout.path(user))
            pending = q.read_intent(key)
            trees: TreeCache | None = None
            if pending is not None and pending.get("op") == "restore":
                src, spare, source = pending["src"], pending["spare"], pending["source"]
            else:
                if _still_there(lc, snap, parent_fd, name):
                    result.source = "volume"
                    return
                src, source, trees = _source(lc, q, home, snap, progress)
                spare = spare_name(key)
                q.write_intent(key, {"op": "restore", "src": src, "spare": spare, "source": source})
            if q.exists(src) is not None:
                swap_into_place(q, src, parent_fd, name, spare)
            home_fd = open_dir(name, parent_fd)
            try:
                moved = _merge_spare(q, spare, home_fd, snap)
                lost = apply_root_meta(home_fd, snap, as_root=os.geteuid() == 0)
                for what in lost:
                    log.warning("%s: the home's %s", user, what)
                if source == "quarantine":
                    _repair(lc, q, snap, home_fd, moved, trees)
            finally:
                os.close(home_fd)
            q.clear_intent(key)
            result.source, result.conflicts = source, moved.conflicts
            if moved.conflicts_dir is not None:
                result.conflicts_dir = str(lc.layout.path(user) / moved.conflicts_dir)
        finally:
            os.close(parent_fd)


def _check_folder(parent_fd: int, name: str, path: Path) -> None:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise HomeNotAFolder(path)


def _still_there(lc: Lifecycle, snap: Snapshot, parent_fd: int, name: str) -> bool:
    """True if the home folder itself still holds the snapshot (an archive stopped
    before moving it): then there is nothing to bring back."""
    try:
        fd = open_dir(name, parent_fd)
    except FileNotFoundError:
        return False
    try:
        names = set(os.listdir(fd)) - {NOTICE_NAME}
        if not names:
            return False
        # Content, not identity: a restore that finished before its database step (its
        # process died, or the database was down) wrote new inodes.
        trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
        cmp = compare_tree(trees, snap, fd, identity=False)
        if any(d.what != "added" for d in cmp.differences):
            return False
        if is_our_notice(fd):
            os.unlink(NOTICE_NAME, dir_fd=fd)
        return True
    finally:
        os.close(fd)


def _source(
    lc: Lifecycle, q: Quarantine, home: Home, snap: Snapshot, progress: ProgressFn | None
) -> tuple[str, str, TreeCache | None]:
    """The complete folder to put in place: the quarantined home if it is this
    snapshot's, else a restore of the bucket built in the quarantine. The quarantine's
    snapshot trees are loaded before anything moves: a repository that cannot be read
    fails the restore with the files still where they were."""
    qname = Path(home.quarantine_path).name if home.quarantine_path else None
    if (
        qname is not None
        and lc.restore_from_quarantine
        and qname.endswith("." + snap.id[:12])
        and q.exists(qname) is not None
    ):
        return (
            qname,
            "quarantine",
            TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers),
        )
    # One name per snapshot: a build or staging folder that a killed restore left is
    # found (and replaced) by the next one.
    build = f"{local_key(home.user)}.{snap.id[:12]}{BUILD}"
    if q.exists(build) is not None:
        remove_tree(build, q.fd)
    restore(lc.repo, snap, q.root / build, workers=lc.workers, progress=progress)
    return build, "bucket", None


def _merge_spare(q: Quarantine, spare: str, home_fd: int, snap: Snapshot) -> Moved:
    """The stand-in that was in the home's place: the user's entries in it join the
    home (theirs are newer), then it is removed if only the notice is left."""
    if q.exists(spare) is None:
        return Moved()
    left_fd = open_dir(spare, q.fd)
    try:
        uid, gid = snap.root.get("uid", 0), snap.root.get("gid", 0)
        moved = merge_leftovers(left_fd, home_fd, snap.id[:12], (uid, gid), newer=True)
    finally:
        os.close(left_fd)
    if not remove_stand_in(q, spare):
        log.error("%s in the quarantine still holds files after merging; kept", spare)
    return moved


def _repair(
    lc: Lifecycle,
    q: Quarantine,
    snap: Snapshot,
    home_fd: int,
    moved: Moved,
    trees: TreeCache | None,
) -> None:
    """Fetch from the bucket only what the put-back quarantine lacks or holds changed."""
    if trees is None:
        trees = TreeCache(lc.repo.for_snapshot(snap), [snap.tree], workers=lc.workers)
    cmp = compare_tree(trees, snap, home_fd, moved_top=True, limit=REPAIR_LIMIT, descend=True)
    mine = set(moved.conflicts) | ({str(moved.conflicts_dir)} if moved.conflicts_dir else set())
    removed: list[bytes] = []
    changed: list[bytes] = []
    for d in cmp.differences:
        if d.what == "added" or d.folder or not d.path or d.path.split("/", 1)[0] in mine:
            continue  # the user's newer entries, and folders (only their entries count)
        (removed if d.what == "removed" else changed).append(os.fsencode(d.path))
    if not removed and not changed:
        return
    if len(cmp.differences) >= REPAIR_LIMIT:
        log.error(
            "%s: the quarantine differs from snapshot %s in %d+ places; kept as it is",
            snap.user,
            snap.id[:12],
            REPAIR_LIMIT,
        )
        return
    log.warning(
        "%s: the quarantine differs from snapshot %s: %d missing, %d changed; fetching those",
        snap.user,
        snap.id[:12],
        len(removed),
        len(changed),
    )
    build = f"{local_key(snap.user)}.{snap.id[:12]}{PART}"
    if q.exists(build) is not None:
        remove_tree(build, q.fd)
    restore(lc.repo, snap, q.root / build, workers=lc.workers, include=removed + changed)
    bfd = open_dir(build, q.fd)
    try:
        for rel in sorted(removed):
            _move_to_place(bfd, home_fd, rel)
        for rel in sorted(removed, key=len, reverse=True):
            _prune_empty_parents(bfd, rel)
        names = sorted(map(os.fsencode, os.listdir(bfd)))
        if names:
            box = make_conflicts_dir(
                home_fd,
                snap.id[:12] + "-archived",
                snap.root.get("uid", 0),
                snap.root.get("gid", 0),
            )
            try:
                for n in names:
                    rename_noreplace(n, n, src_dir_fd=bfd, dst_dir_fd=box[1])
            finally:
                os.close(box[1])
    finally:
        os.close(bfd)
    remove_tree(build, q.fd)


def _move_to_place(src_root: int, dst_root: int, rel: bytes) -> None:
    """Move ``rel`` from the build to the same place in the home, by descriptors; left
    in the build (and so put into the conflicts folder) if its name was taken."""
    parent, _, base = rel.rpartition(b"/")
    try:
        sfd = open_beneath(src_root, parent) if parent else os.dup(src_root)
        try:
            dfd = open_beneath(dst_root, parent) if parent else os.dup(dst_root)
            try:
                rename_noreplace(base, base, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EXDEV):
            raise


def _prune_empty_parents(root_fd: int, rel: bytes) -> None:
    """Remove the folders above ``rel`` in the build that are now empty."""
    parts = rel.split(b"/")[:-1]
    while parts:
        parent, _, base = b"/".join(parts).rpartition(b"/")
        fd = open_beneath(root_fd, parent) if parent else os.dup(root_fd)
        try:
            os.rmdir(base, dir_fd=fd)
        except OSError:
            return
        finally:
            os.close(fd)
        parts.pop()
