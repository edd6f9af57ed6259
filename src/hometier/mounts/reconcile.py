"""The check loop: the database and ``/proc/self/mountinfo`` made to agree again.

``check(manager)`` runs at start-up (adopting what a previous hometier left mounted) and
then every ``c.Mounts.check_interval``. For each host mount of this host, under its row
lock (``SKIP LOCKED``: one that another replica is working on is left to it):

- rows of an earlier boot: everything they describe is gone; forget them;
- ``releasing`` attachments: try to unmount again (their files may be closed now);
- attachments whose bind mount vanished (someone unmounted it): forget them;
- a daemon that is dead (ENOTCONN), hung (statfs timed out: it is killed) or missing:
  recover it while anyone uses it (a new generation, propagated to every consumer;
  consumers it did not reach are bound again and their owners told), unmount it if
  nobody does;
- an idle mount past ``unmount_after``: unmount it, unless a process still uses it.

Then mounts below the mounts root that no row accounts for (a crash between the kernel
and the commit) are unmounted, with their consumers, unless busy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from hometier.errors import Error
from hometier.mounts import folders
from hometier.mounts import syscalls as sc
from hometier.mounts.host import KEY_LEN, Busy, Target
from hometier.mounts.manager import MountManager
from hometier.mounts.mountinfo import MountTable
from hometier.mounts.probe import Health
from hometier.state import mounts as q

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    adopted: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rebound: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_doc(self) -> dict[str, list[str]]:
        return dataclasses.asdict(self)


def check(mgr: MountManager) -> CheckReport:
    report = CheckReport()
    for pid, proc in list(mgr.procs.items()):
        if proc.poll() is not None:  # reap daemons that ended (unmounted elsewhere too)
            mgr.procs.pop(pid, None)
    with mgr.db.transaction(write=False) as s:
        keys = [hm.key for hm in q.host_mounts(s, mgr.host)]
    below = [
        e for e in MountTable.read().under(mgr.layout.root) if e.mount_point != str(mgr.layout.root)
    ]
    if not keys and not below:
        return report  # bucket folders are not used on this host: touch nothing
    mgr.layout.prepare()
    for key in keys:
        try:
            _check_one(mgr, key, report)
        except Error as exc:
            report.errors.append(f"{key[:12]}: {exc.get_message()}")
            log.warning("bucket folder mount %s: %s", key[:12], exc)
    _orphans(mgr, report)
    return report


def _lock(mgr: MountManager, s: Session, key: str) -> q.HostMount | None:
    rows = [hm for hm in q.host_mounts(s, mgr.host, lock=True) if hm.key == key]
    return rows[0] if rows else None


def _check_one(mgr: MountManager, key: str, report: CheckReport) -> None:
    now = mgr.clock()
    with mgr.db.transaction() as s:
        hm = _lock(mgr, s, key)
        if hm is None:
            return
        name = hm.key[:12]
        if hm.boot_id != sc.boot_id():
            for att in q.attachments_of(s, hm):
                q.log_event(
                    s,
                    "mount.lost",
                    mgr.actor,
                    now,
                    user=att.user,
                    server=att.server,
                    target=att.target,
                    reason="the host restarted",
                )
                s.delete(att)
            q.log_event(s, "mount.unmount", mgr.actor, now, mount=name, reason="host restarted")
            s.delete(hm)
            report.unmounted.append(name)
            return
        table = MountTable.read()
        for att in q.attachments_of(s, hm):
            if att.state == q.RELEASING:
                if mgr.detach(s, att, hm, now) == "released":
                    report.released.append(f"{att.user}/{att.server}")
                else:
                    report.busy.append(att.target)
            elif att.mount_id is not None and table.get(att.mount_id) is None:
                q.remove_attachment(s, att, hm, mgr.actor, now, reason="bind mount vanished")
                report.released.append(f"{att.user}/{att.server}")
        hm.refs = q.count_attachments(s, hm)
        health, detail = mgr.healthy(hm) if hm.state == q.MOUNTED else (Health.MISSING, "")
        if health is Health.OK:
            if hm.pid not in mgr.procs:
                report.adopted.append(name)
            _unmount_if_idle(mgr, s, hm, report)
            return
        if hm.refs == 0:
            _stop_dead(mgr, hm)
            mgr.teardown(s, hm, now, reason=f"unused and {detail or hm.state}")
            report.unmounted.append(name)
            return
        _recover(mgr, s, hm, health, detail, report)


def _stop_dead(mgr: MountManager, hm: q.HostMount) -> None:
    mgr.stop_daemon(hm, hm.pid, grace=1.0)
    for point in mgr.layout.points(hm.key):
        mgr.layout.drop_dead(point)


def _recover(
    mgr: MountManager,
    s: Session,
    hm: q.HostMount,
    health: Health,
    detail: str,
    report: CheckReport,
) -> None:
    now = mgr.clock()
    name = hm.key[:12]
    attachments = q.attachments_of(s, hm)
    if hm.state == q.MOUNTED:
        for att in attachments:
            q.log_event(
                s,
                "mount.lost",
                mgr.actor,
                now,
                user=att.user,
                server=att.server,
                target=att.target,
                reason=detail,
            )
    if health is Health.HUNG:
        mgr.stop_daemon(hm, hm.pid, grace=1.0)  # then it is dead
    row = q.folder_by_id(s, hm.folder_id)
    try:
        creds = folders.credentials_of(row, mgr.sealer)
        mgr.start_generation(s, hm, folders.spec_of(row), creds)
    except Error as exc:
        hm.state, hm.error, hm.updated_at = q.FAILED, exc.get_message(), now
        for att in attachments:
            att.error = f"The bucket folder is interrupted and being reconnected: {hm.error}"
        report.errors.append(f"{name}: {hm.error}")
        return
    report.recovered.append(name)
    table = MountTable.read()
    top = table.top(mgr.layout.anchor(hm.key))
    for att in attachments:
        base = table.get(att.mount_id)
        layers = [base, *table.above(base)] if base is not None else []
        if layers and top is not None and layers[-1].dev == top.dev:
            att.error = None
            q.log_event(
                s,
                "mount.recovered",
                mgr.actor,
                now,
                user=att.user,
                server=att.server,
                target=att.target,
            )
            continue
        _rebind(mgr, s, hm, att, report)


def _rebind(
    mgr: MountManager, s: Session, hm: q.HostMount, att: q.MountAttachment, report: CheckReport
) -> None:
    """A consumer that propagation did not reach: bind it again, and tell its owner
    that what was open in it must be opened again."""
    now = mgr.clock()
    target = Target(Path(att.base), tuple(Path(att.target).relative_to(att.base).parts))
    try:
        if att.mount_id is not None:
            # Busy (a process sits in it) ends here: the owner is told to restart.
            mgr.layout.detach(target, att.mount_id, devs=set())
        owner = (hm.uid, hm.gid) if att.kind == "local" else (0, 0)
        att.mount_id = mgr.layout.attach(hm.key, target, read_only=att.read_only, owner=owner)
        att.error = (
            "The bucket folder was reconnected; files that were open in it must be opened again."
        )
        att.state = q.ATTACHED
        report.rebound.append(att.target)
        q.log_event(
            s, "mount.rebound", mgr.actor, now, user=att.user, server=att.server, target=att.target
        )
    except (Error, OSError) as exc:
        att.state = q.LOST
        att.error = (
            "The bucket folder was interrupted and could not be reconnected in this "
            "server; restart the server to get it back."
        )
        report.errors.append(f"{att.target}: {exc}")
        q.log_event(
            s,
            "mount.lost",
            mgr.actor,
            now,
            user=att.user,
            server=att.server,
            target=att.target,
            reason=str(exc),
        )


def _unmount_if_idle(mgr: MountManager, s: Session, hm: q.HostMount, report: CheckReport) -> None:
    now = mgr.clock()
    if hm.refs > 0:
        return
    if hm.idle_since is None:
        hm.idle_since = now
    if now - hm.idle_since < mgr.unmount_after:
        return
    try:
        mgr.teardown(s, hm, now, reason="idle")
        report.unmounted.append(hm.key[:12])
    except Busy as exc:
        report.busy.append(exc.get_message())


def unmount_idle(mgr: MountManager) -> CheckReport:
    """Unmount the idle mounts whose delay has passed (and nothing else)."""
    report = CheckReport()
    with mgr.db.transaction(write=False) as s:
        keys = [hm.key for hm in q.host_mounts(s, mgr.host) if hm.refs == 0]
    for key in keys:
        with mgr.db.transaction() as s:
            hm = _lock(mgr, s, key)
            if hm is not None and q.count_attachments(s, hm) == 0:
                _unmount_if_idle(mgr, s, hm, report)
    return report


def _orphans(mgr: MountManager, report: CheckReport) -> None:
    """Unmount what lies under the mounts root (and binds of it elsewhere) that no row of
    this host accounts for."""
    with mgr.db.transaction(write=False) as s:
        rows = q.host_mounts(s, mgr.host)
        known_ids = {a.mount_id for hm in rows for a in q.attachments_of(s, hm)}
    keys = {hm.key[:KEY_LEN] for hm in rows}
    table = MountTable.read()
    ours = table.under(mgr.layout.root)
    orphan_devs = set()
    for e in ours:
        rel = Path(e.mount_point).relative_to(mgr.layout.root).parts
        if len(rel) < 2 or rel[0] not in ("fs", "shared"):
            continue
        if rel[1].split(".")[0] not in keys:
            orphan_devs.add(e.dev)
    for dev in orphan_devs:
        for e in sorted(table.with_dev(dev), key=lambda e: -e.mount_id):
            if e.mount_id in known_ids:
                continue
            point = Path(e.mount_point)
            try:
                if point == mgr.layout.root or mgr.layout.root in point.parents:
                    mgr.layout.unmount_stack(point, str(point), {dev})
                    with contextlib.suppress(OSError):
                        point.rmdir()
                else:
                    mgr.layout.detach(Target(Path("/"), point.parts[1:]), e.mount_id, devs={dev})
                report.orphans.append(str(point))
            except Busy as exc:
                report.busy.append(exc.get_message())
            except OSError as exc:
                report.errors.append(f"{point}: {exc}")


__all__ = ["CheckReport", "check", "unmount_idle"]
