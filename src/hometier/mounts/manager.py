"""Attach a server's bucket folders at spawn, release them at stop, keep mounts alive.

``MountManager`` joins the database (``hometier.state.mounts``: who holds what) and the
kernel (``host.HostLayout``: what is mounted). The rules:

- *Attach* runs under the host mount's row lock: the first server mounts (after a
  preflight through the object-store API), every later one only binds; two replicas
  that attach at once wait for each other and mount once. If anything fails, whatever
  this call mounted is unmounted again and the transaction rolls back: no stale mount,
  no stale row.
- *Release* unmounts the server's bind (never lazily). EBUSY (a process still holds a
  file there) leaves the attachment ``releasing`` and the host mount counted; the check
  loop tries again. The last release starts the idle delay (``unmount_after``); the
  daemon is stopped only after it, and only if no process uses the mount.
- *Recover* (``reconcile.check``) starts a new daemon generation on top of a dead one;
  consumers see it through propagation. A consumer that did not (it was not a slave) is
  bound again, and its owner is told through the event log and the dashboard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hometier.crypto import Sealer
from hometier.errors import Error, UsageError
from hometier.mounts import folders
from hometier.mounts import syscalls as sc
from hometier.mounts.client import (
    Daemon,
    MountFailed,
    S3fs,
    cmdline,
    pid_alive,
    stop_pid,
    wait_mounted,
)
from hometier.mounts.host import Busy, HostLayout, Target
from hometier.mounts.mountinfo import MountTable
from hometier.mounts.objects import FolderObjects
from hometier.mounts.probe import Health, probe, users_of
from hometier.mounts.spec import Credentials, FolderSpec, mount_key, safe_component, split_relative
from hometier.state import mounts as q
from hometier.state.db import Database

log = logging.getLogger(__name__)

KINDS = ("local", "host")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Outcome:
    """What happened to one folder of one server."""

    folder: str
    state: str  # attached | released | releasing | failed | skipped
    target: str = ""
    read_only: bool = False
    error: str = ""

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"folder": self.folder, "state": self.state}
        if self.target:
            doc.update(target=self.target, read_only=self.read_only)
        if self.error:
            doc["error"] = self.error
        return doc


@dataclass
class MountManager:
    db: Database
    layout: HostLayout
    sealer: Sealer | None = None
    host: str = field(default_factory=socket.gethostname)
    client: S3fs = field(default_factory=S3fs)
    unmount_after: dt.timedelta = dt.timedelta(minutes=5)
    probe_timeout: float = 5.0
    mount_timeout: float = 20.0
    clock: Callable[[], dt.datetime] = utcnow
    preflight: bool = True
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def actor(self) -> str:
        return f"mounts:{self.host}:{os.getpid()}"

    # --- attach ----------------------------------------------------------------------

    def attach_server(
        self,
        user: str,
        server: str,
        *,
        kind: str,
        groups: Iterable[str] = (),
        home: str | os.PathLike[str] | None = None,
        uid: int,
        gid: int,
        only: Iterable[str] | None = None,
    ) -> list[Outcome]:
        """Attach every folder ``user`` may use (or those in ``only``) to one server.

        ``kind="local"``: the server runs on this host as ``uid``; each folder is bound
        at its mount path inside ``home``. ``kind="host"``: the server runs in a
        container; each folder is bound below the layout's ``servers`` folder and the
        caller binds that into the container. A folder that fails is reported in its
        outcome; the others are attached all the same.
        """
        if kind not in KINDS:
            raise UsageError(f"kind must be one of {', '.join(KINDS)}")
        if kind == "local" and home is None:
            raise UsageError("a local server needs its home folder")
        with self.db.transaction(write=False) as s:
            chosen = folders.usable(s, user, groups, only)
        out = []
        for use in chosen:
            try:
                target = self._target(use.spec, user, server, kind, home)
                out.append(self._attach_one(use, user, server, kind, target, uid, gid))
            except Error as exc:
                log.warning("bucket folder %s for %s/%s: %s", use.spec.name, user, server, exc)
                out.append(Outcome(use.spec.name, "failed", error=exc.get_message()))
        return out

    def _target(self, spec: FolderSpec, user: str, server: str, kind: str, home: Any) -> Target:
        if kind == "host":
            parts = (safe_component(user), safe_component(server or "default"), spec.name)
            return Target(self.layout.servers, parts)
        if spec.mount_path.startswith("/"):
            raise UsageError(
                f"bucket folder {spec.name}: a server on this host gets folders inside its "
                f"home; the mount path {spec.mount_path} is absolute"
            )
        return Target(Path(home), tuple(split_relative(spec.mount_path)))

    def _attach_one(
        self,
        use: folders.Usable,
        user: str,
        server: str,
        kind: str,
        target: Target,
        uid: int,
        gid: int,
    ) -> Outcome:
        spec, read_only = use.spec, use.mode == "ro"
        now = self.clock()
        with self.db.transaction() as s:
            done = self._already(s, use.row.id, user, server, kind, target, now)
            if done is not None:
                return done
            owner = (uid, gid) if kind == "local" else (0, 0)
            creds = folders.credentials_of(use.row, self.sealer)
            key = mount_key(spec, creds, read_only=read_only, uid=uid, gid=gid)
            hm = q.upsert_host_mount(
                s,
                host=self.host,
                key=key,
                folder=use.row,
                read_only=read_only,
                uid=uid,
                gid=gid,
                boot_id=sc.boot_id(),
                now=now,
            )
            # The bucket is asked first, then the host is touched, then the daemon starts:
            # a wrong key, a missing bucket, an outage or a refused path leave nothing.
            started = not (hm.state == q.MOUNTED and self.healthy(hm)[0] is Health.OK)
            if started and self.preflight:
                FolderObjects(spec, creds, attempts=2).preflight()
            self.layout.prepare()
            self.layout.check_target(target, owner)
            if started:
                self.start_generation(s, hm, spec, creds, preflight=False)
            try:
                mount_id = self.layout.attach(key, target, read_only=read_only, owner=owner)
            except Error as exc:
                failure: Error | None = exc
            else:
                failure = None
                q.add_attachment(
                    s,
                    hm,
                    user=user,
                    server=server,
                    kind=kind,
                    target=str(target.path),
                    base=str(target.base),
                    read_only=read_only,
                    mount_id=mount_id,
                    actor=self.actor,
                    now=now,
                )
            if failure is not None:
                if started and hm.refs == 0:
                    self.teardown(s, hm, now, reason="its first server could not attach")
                # Committed all the same: a daemon started for others stays recorded.
        if failure is not None:
            raise failure
        return Outcome(spec.name, "attached", str(target.path), read_only)

    def _already(
        self,
        s: Session,
        folder_id: int,
        user: str,
        server: str,
        kind: str,
        target: Target,
        now: dt.datetime,
    ) -> Outcome | None:
        """An attachment this server already has (attach is idempotent), or one that
        another server of the same user holds at the same place in the same home: that
        bind is shared, and counted once more."""
        table = MountTable.read()
        for att, hm in q.server_attachments(s, self.host, user, None):
            if att.folder_id != folder_id:
                continue
            alive = table.get(att.mount_id) is not None
            if att.server == server:
                if alive:
                    if att.state == q.RELEASING:  # the server is back before its bind went
                        att.state, att.error, att.updated_at = q.ATTACHED, None, now
                    return Outcome(_name(s, folder_id), att.state, att.target, att.read_only)
                locked = q.lock_host_mount(s, hm.host, hm.key)
                assert locked is not None
                q.remove_attachment(s, att, locked, self.actor, now, reason="bind mount vanished")
                continue
            if kind == "local" and att.kind == "local" and att.target == str(target.path) and alive:
                locked = q.lock_host_mount(s, hm.host, hm.key)
                assert locked is not None
                q.add_attachment(
                    s,
                    locked,
                    user=user,
                    server=server,
                    kind=kind,
                    target=att.target,
                    base=att.base,
                    read_only=att.read_only,
                    mount_id=att.mount_id,
                    actor=self.actor,
                    now=now,
                )
                return Outcome(_name(s, folder_id), "attached", att.target, att.read_only)
        return None

    # --- the daemon --------------------------------------------------------------------

    def daemon_alive(self, hm: q.HostMount, pid: int | None = None) -> bool:
        """True while the daemon recorded for ``hm`` runs: our child, or (after a
        restart) a process whose command line mounts this host mount's point (a PID the
        kernel gave to something else since is not it)."""
        pid = hm.pid if pid is None else pid
        proc = self.procs.get(pid or -1)
        if proc is not None:
            return pid_alive(pid, proc)
        prefix = str(self.layout.point(hm.key, 0))[:-1]  # ".../fs/<key>."
        return pid_alive(pid) and any(a.startswith(prefix) for a in cmdline(pid or -1))

    def stop_daemon(self, hm: q.HostMount, pid: int | None, grace: float) -> None:
        """Stop the daemon ``pid`` of ``hm`` by its PID, if it is still that daemon."""
        if pid and self.daemon_alive(hm, pid):
            stop_pid(pid, self.procs.get(pid), grace=grace)
        if pid:
            proc = self.procs.pop(pid, None)
            if proc is not None:
                proc.poll()

    def healthy(self, hm: q.HostMount) -> tuple[Health, str]:
        if hm.boot_id != sc.boot_id():
            return Health.MISSING, "mounted before the host restarted"
        point = self.layout.point(hm.key, hm.generation)
        top = MountTable.read().top(point)
        if top is None or not top.is_fuse:
            return Health.MISSING, "not mounted"
        if not self.daemon_alive(hm):
            return Health.DEAD, "its daemon is gone"
        return probe(point, self.probe_timeout)

    def start_generation(
        self,
        s: Session,
        hm: q.HostMount,
        spec: FolderSpec,
        creds: Credentials | None,
        *,
        preflight: bool = True,
    ) -> None:
        """Start daemon generation ``hm.generation + 1`` and bind it on the anchor; drop
        the previous one (dead, or hung and killed here). ``MountFailed`` or
        ``FolderUnreachable`` leave the previous state of the kernel as it was."""
        if preflight and self.preflight:
            FolderObjects(spec, creds, attempts=2).preflight()
        self.layout.prepare()
        gen = hm.generation + 1
        point = self.layout.point(hm.key, gen)
        daemon = self._start_daemon(hm, spec, creds, point, gen)
        try:
            self.layout.publish(hm.key, point)
        except BaseException:
            self._abandon(daemon)
            raise
        old_pid, old_point = hm.pid, self.layout.point(hm.key, hm.generation)
        if hm.generation and old_point != point:
            if old_pid and old_pid != daemon.pid:
                self.stop_daemon(hm, old_pid, grace=1.0)
            self.layout.drop_dead(old_point)
        now = self.clock()
        hm.generation, hm.pid, hm.state, hm.error = gen, daemon.pid, q.MOUNTED, None
        hm.boot_id, hm.updated_at = sc.boot_id(), now
        s.flush()

    def _start_daemon(
        self,
        hm: q.HostMount,
        spec: FolderSpec,
        creds: Credentials | None,
        point: Path,
        gen: int,
    ) -> Daemon:
        self.layout.drop_dead(point)  # a leftover of a crash with the same generation
        point.mkdir(mode=0o700)
        log_path = self.layout.log(hm.key, gen)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as logf:
            proc = self.client.start(
                spec,
                creds,
                point,
                read_only=hm.read_only,
                uid=hm.uid,
                gid=hm.gid,
                log=logf,
                home=self.layout.run,
            )
        self.procs[proc.pid] = proc
        daemon = Daemon(proc.pid, point, proc)
        try:
            wait_mounted(proc, point, self.mount_timeout, spec.name, log_path)
            health, detail = probe(point, self.probe_timeout)
            if health is not Health.OK:
                raise MountFailed(spec.name, f"the new mount does not answer ({detail})")
        except BaseException:
            self._abandon(daemon)
            raise
        log.info("mounted %s (generation %d, pid %d) at %s", spec.name, gen, proc.pid, point)
        return daemon

    def _abandon(self, daemon: Daemon) -> None:
        """Undo a daemon this call started: nobody used its mount yet."""
        stop_pid(daemon.pid, daemon.proc, grace=2.0)
        self.procs.pop(daemon.pid, None)
        self.layout.drop_dead(daemon.point)

    def teardown(self, s: Session, hm: q.HostMount, now: dt.datetime, reason: str) -> None:
        """Unmount an unused host mount (``hm`` locked, no attachments), stop its daemon
        and forget it. ``Busy`` (nothing forgotten) if a process still uses it."""
        table = MountTable.read()
        devs = {e.dev for e in table.stack(self.layout.anchor(hm.key))}
        for point in self.layout.points(hm.key):
            devs |= {e.dev for e in table.stack(point)}
        users = users_of(
            [e.mount_id for d in devs for e in table.with_dev(d)], devs, skip=[hm.pid or 0]
        )
        if users:
            raise Busy(f"bucket folder mount {hm.key[:12]}", ", ".join(map(str, users[:5])))
        self.layout.unmount_stack(self.layout.anchor(hm.key), "its anchor", devs)
        for point in self.layout.points(hm.key):
            self.layout.unmount_stack(point, "its daemon's mount", devs)
            with contextlib.suppress(OSError):
                point.rmdir()
        with contextlib.suppress(OSError):
            self.layout.anchor(hm.key).rmdir()
        # s3fs exits once its mount is gone; a daemon that does not is stopped.
        self.stop_daemon(hm, hm.pid, grace=5.0)
        q.log_event(
            s, "mount.unmount", self.actor, now, host=hm.host, mount=hm.key[:12], reason=reason
        )
        s.delete(hm)
        s.flush()

    # --- release -----------------------------------------------------------------------

    def release_server(self, user: str, server: str | None) -> list[Outcome]:
        """Release the attachments of one server (``server=None``: every server of
        ``user``) on this host; then unmount idle mounts whose delay is zero."""
        with self.db.transaction(write=False) as s:
            pairs = q.server_attachments(s, self.host, user, server)
            names = {f.id: f.name for f in q.list_folders(s)}
        out = [
            self._release_one(att.id, hm.key, names.get(att.folder_id, "?")) for att, hm in pairs
        ]
        if self.unmount_after.total_seconds() <= 0:
            from hometier.mounts.reconcile import unmount_idle

            unmount_idle(self)
        return out

    def _release_one(self, att_id: str, key: str, name: str) -> Outcome:
        now = self.clock()
        with self.db.transaction() as s:
            hm = q.lock_host_mount(s, self.host, key)
            att = s.get(q.MountAttachment, att_id, populate_existing=True)
            if hm is None or att is None:
                return Outcome(name, "released")
            outcome = self.detach(s, att, hm, now)
            return Outcome(name, outcome, att.target, att.read_only, att.error or "")

    def detach(self, s: Session, att: q.MountAttachment, hm: q.HostMount, now: dt.datetime) -> str:
        """Unmount one attachment (``hm`` locked) and forget it, or mark it
        ``releasing`` if its bind is busy. Returns ``released`` or ``releasing``."""
        others = [
            a
            for a in q.attachments_of(s, hm)
            if a.id != att.id and a.mount_id == att.mount_id and a.target == att.target
        ]
        if not others and att.mount_id is not None:
            target = Target(Path(att.base), _parts(att.base, att.target))
            devs = {e.dev for e in self.layout.anchor_stack(hm.key)}
            try:
                self.layout.detach(target, att.mount_id, devs=devs)
            except Busy as exc:
                first = att.state != q.RELEASING
                att.state, att.error, att.updated_at = q.RELEASING, exc.get_message(), now
                if first:
                    q.log_event(
                        s,
                        "mount.busy",
                        self.actor,
                        now,
                        user=att.user,
                        server=att.server,
                        target=att.target,
                        error=att.error,
                    )
                return q.RELEASING
        q.remove_attachment(s, att, hm, self.actor, now)
        return "released"


def _parts(base: str, target: str) -> tuple[str, ...]:
    rel = os.path.relpath(target, base)
    return tuple(split_relative(rel))


def _name(s: Session, folder_id: int) -> str:
    return q.folder_by_id(s, folder_id).name


__all__ = ["KINDS", "MountManager", "Outcome"]
