"""Bucket folders in the state database: what is registered, mounted and attached where.

Terms (``hometier.mounts`` explains the mechanics):

- A *bucket folder* (``BucketFolder``) is an admin's registration: endpoint, bucket and
  prefix, sealed credentials, who may use it and how (``access``), client options and
  the default path in servers. ``revision`` grows at every change, so mounts made with an
  older revision are told apart from new ones.
- A *host mount* (``HostMount``) is one FUSE mount on one host, shared by every server
  there that uses the same folder revision with the same access mode and owner
  (``key``). ``refs`` counts its attachments; it is kept equal to their number in the
  same transaction that adds or removes one.
- An *attachment* (``MountAttachment``) is one server's bind mount of a host mount.

Every change of ``refs`` happens under the host mount's row lock (``FOR UPDATE`` on
PostgreSQL; SQLite's single writer otherwise), so replicas on one host that attach or
release at once never both mount, and never unmount under each other. The functions here
take a ``Session`` inside the caller's transaction: the caller mounts or unmounts while it
holds the lock, and commits only when the kernel agrees. Events go to the shared log
(``events``) with kinds ``mount.*``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from hometier.errors import Conflict, NotFound
from hometier.state.models import Base, Event

MOUNTING = "mounting"
MOUNTED = "mounted"
FAILED = "failed"
MOUNT_STATES = (MOUNTING, MOUNTED, FAILED)

ATTACHED = "attached"
RELEASING = "releasing"
LOST = "lost"
ATTACHMENT_STATES = (ATTACHED, RELEASING, LOST)


class BucketFolder(Base):
    """A bucket (or a prefix of one) that admins made available as a folder."""

    __tablename__ = "bucket_folders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    endpoint: Mapped[str] = mapped_column(Text, default="")
    region: Mapped[str] = mapped_column(String(64), default="us-east-1")
    bucket: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(Text, default="")
    credentials: Mapped[str | None] = mapped_column(Text)
    """Sealed JSON (``hometier.crypto``); None for a public bucket read anonymously."""
    access: Mapped[list[Any]] = mapped_column(JSON, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mount_path: Mapped[str] = mapped_column(Text)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<BucketFolder {self.name} r{self.revision}>"


class HostMount(Base):
    """One FUSE mount of a folder on one host, shared by its attachments."""

    __tablename__ = "host_mounts"
    __table_args__ = (
        UniqueConstraint("host", "key"),
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in MOUNT_STATES)), name="state"
        ),
        CheckConstraint("refs >= 0", name="refs"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(64))
    folder_id: Mapped[int] = mapped_column(ForeignKey("bucket_folders.id"), index=True)
    folder_revision: Mapped[int] = mapped_column(Integer)
    read_only: Mapped[bool] = mapped_column(Boolean)
    uid: Mapped[int] = mapped_column(Integer)
    gid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=MOUNTING)
    refs: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    """Grows each time the daemon is (re)started; names its mount point."""
    pid: Mapped[int | None] = mapped_column(Integer)
    boot_id: Mapped[str] = mapped_column(String(64), default="")
    idle_since: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<HostMount {self.host}/{self.key[:12]} {self.state} refs={self.refs}>"


class MountAttachment(Base):
    """One server's bind mount of a host mount."""

    __tablename__ = "mount_attachments"
    __table_args__ = (
        UniqueConstraint("host_mount_id", "user", "server"),
        Index(None, "user", "server"),
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in ATTACHMENT_STATES)), name="state"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host_mount_id: Mapped[int] = mapped_column(ForeignKey("host_mounts.id"), index=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("bucket_folders.id"))
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255), default="")
    kind: Mapped[str] = mapped_column(String(16))
    base: Mapped[str] = mapped_column(Text)
    """The folder the bind lives under (a home, or the servers folder): reached first,
    then ``target`` below it one component at a time, never through a symlink."""
    target: Mapped[str] = mapped_column(Text)
    read_only: Mapped[bool] = mapped_column(Boolean)
    mount_id: Mapped[int | None] = mapped_column(Integer)
    """The kernel's id of the bind mount (``/proc/self/mountinfo``), to find it again."""
    state: Mapped[str] = mapped_column(String(16), default=ATTACHED)
    error: Mapped[str | None] = mapped_column(Text)
    acquired_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<MountAttachment {self.user}/{self.server} {self.state} {self.target}>"


class FolderNotFound(NotFound):
    """No bucket folder named {} is registered."""


class FolderExists(Conflict):
    """A bucket folder named {} is already registered."""


class FolderInUse(Conflict):
    """Bucket folder {} is attached to {} server(s); release them (stop the servers) first."""


def log_event(
    s: Session, kind: str, actor: str, now: datetime, user: str | None = None, **detail: Any
) -> None:
    s.add(Event(home_id=None, user=user, at=now, kind=kind, actor=actor, detail=detail or None))


# -- folders ------------------------------------------------------------------------------


def get_folder(s: Session, name: str, *, lock: bool = False) -> BucketFolder:
    q = select(BucketFolder).where(BucketFolder.name == name)
    if lock:
        q = q.with_for_update()
    folder = s.scalars(q.execution_options(populate_existing=True)).one_or_none()
    if folder is None:
        raise FolderNotFound(name)
    return folder


def folder_by_id(s: Session, folder_id: int) -> BucketFolder:
    folder = s.get(BucketFolder, folder_id, populate_existing=True)
    if folder is None:
        raise FolderNotFound(f"#{folder_id}")
    return folder


def list_folders(s: Session) -> list[BucketFolder]:
    return list(s.scalars(select(BucketFolder).order_by(BucketFolder.name)))


def create_folder(s: Session, actor: str, now: datetime, **fields: Any) -> BucketFolder:
    """A new folder (``FolderExists`` if the name is taken, also under a race)."""
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = dict(fields, created_by=actor, created_at=now, updated_at=now, revision=1)
    stmt = insert(BucketFolder).values(values).on_conflict_do_nothing(index_elements=["name"])
    if s.execute(stmt.returning(BucketFolder.id)).scalar_one_or_none() is None:
        raise FolderExists(fields["name"])
    folder = get_folder(s, fields["name"])
    log_event(s, "mount.folder", actor, now, action="create", folder=folder.name)
    return folder


def update_folder(s: Session, name: str, actor: str, now: datetime, **fields: Any) -> BucketFolder:
    """Change a folder's fields that differ; its revision grows (new attachments get a
    mount of their own) unless nothing changed. The event names the changed fields."""
    folder = get_folder(s, name, lock=True)
    changed = sorted(k for k, v in fields.items() if getattr(folder, k) != v)
    if not changed:
        return folder
    for k in changed:
        setattr(folder, k, fields[k])
    folder.revision += 1
    folder.updated_at = now
    log_event(s, "mount.folder", actor, now, action="update", folder=name, changed=changed)
    s.flush()
    return folder


def delete_folder(s: Session, name: str, actor: str, now: datetime) -> None:
    """Remove a folder; ``FolderInUse`` while any server has it attached."""
    folder = get_folder(s, name, lock=True)
    using = s.scalar(
        select(func.count(MountAttachment.id)).where(MountAttachment.folder_id == folder.id)
    )
    if using:
        raise FolderInUse(name, using)
    mounts = s.scalars(select(HostMount).where(HostMount.folder_id == folder.id)).all()
    for hm in mounts:
        s.delete(hm)  # idle mounts waiting for their delay; the check loop unmounts orphans
    s.flush()
    s.delete(folder)
    log_event(s, "mount.folder", actor, now, action="delete", folder=name)


# -- host mounts --------------------------------------------------------------------------


def lock_host_mount(s: Session, host: str, key: str) -> HostMount | None:
    q = select(HostMount).where(HostMount.host == host, HostMount.key == key).with_for_update()
    return s.scalars(q.execution_options(populate_existing=True)).one_or_none()


def upsert_host_mount(
    s: Session,
    *,
    host: str,
    key: str,
    folder: BucketFolder,
    read_only: bool,
    uid: int,
    gid: int,
    boot_id: str,
    now: datetime,
) -> HostMount:
    """The host mount of ``key`` on ``host``, created ``mounting`` if new, row-locked.

    ``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT … FOR UPDATE``: two replicas that
    arrive together get the same row, one after the other.
    """
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(HostMount)
        .values(
            host=host,
            key=key,
            folder_id=folder.id,
            folder_revision=folder.revision,
            read_only=read_only,
            uid=uid,
            gid=gid,
            state=MOUNTING,
            refs=0,
            generation=0,
            boot_id=boot_id,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["host", "key"])
    )
    s.execute(stmt)
    hm = lock_host_mount(s, host, key)
    assert hm is not None
    return hm


def host_mounts(s: Session, host: str, *, lock: bool = False) -> list[HostMount]:
    """The host mounts of ``host``; with ``lock``, only those no one else holds
    (``FOR UPDATE SKIP LOCKED``: the check loop never waits behind a mount in progress)."""
    q = select(HostMount).where(HostMount.host == host).order_by(HostMount.id)
    if lock:
        q = q.with_for_update(skip_locked=True)
    return list(s.scalars(q.execution_options(populate_existing=True)))


def all_host_mounts(s: Session) -> list[HostMount]:
    return list(s.scalars(select(HostMount).order_by(HostMount.host, HostMount.id)))


# -- attachments --------------------------------------------------------------------------


def attachments_of(s: Session, hm: HostMount) -> list[MountAttachment]:
    q = select(MountAttachment).where(MountAttachment.host_mount_id == hm.id)
    return list(
        s.scalars(q.order_by(MountAttachment.acquired_at).execution_options(populate_existing=True))
    )


def server_attachments(
    s: Session, host: str | None, user: str, server: str | None
) -> list[tuple[MountAttachment, HostMount]]:
    """The attachments of one server (``server=None``: every server of ``user``)."""
    q = (
        select(MountAttachment, HostMount)
        .join(HostMount, HostMount.id == MountAttachment.host_mount_id)
        .where(MountAttachment.user == user)
        .order_by(MountAttachment.acquired_at)
    )
    if host is not None:
        q = q.where(HostMount.host == host)
    if server is not None:
        q = q.where(MountAttachment.server == server)
    return [(a, h) for a, h in s.execute(q).all()]


def list_attachments(s: Session, user: str | None = None) -> list[MountAttachment]:
    q = select(MountAttachment).order_by(MountAttachment.user, MountAttachment.acquired_at)
    if user is not None:
        q = q.where(MountAttachment.user == user)
    return list(s.scalars(q))


def add_attachment(
    s: Session,
    hm: HostMount,
    *,
    user: str,
    server: str,
    kind: str,
    target: str,
    base: str,
    read_only: bool,
    mount_id: int | None,
    actor: str,
    now: datetime,
) -> MountAttachment:
    """Record a bind mount the caller made; ``hm`` must be locked. ``refs`` grows by one."""
    att = MountAttachment(
        id=str(uuid.uuid4()),
        host_mount_id=hm.id,
        folder_id=hm.folder_id,
        user=user,
        server=server,
        kind=kind,
        base=base,
        target=target,
        read_only=read_only,
        mount_id=mount_id,
        state=ATTACHED,
        acquired_at=now,
        updated_at=now,
    )
    s.add(att)
    hm.refs += 1
    hm.idle_since = None
    hm.updated_at = now
    log_event(
        s,
        "mount.attach",
        actor,
        now,
        user=user,
        server=server,
        host=hm.host,
        mount=hm.key[:12],
        target=target,
        read_only=read_only,
    )
    s.flush()
    return att


def remove_attachment(
    s: Session, att: MountAttachment, hm: HostMount, actor: str, now: datetime, **detail: Any
) -> None:
    """Forget an attachment whose bind mount is gone; ``hm`` must be locked. The last one
    starts the host mount's idle time (``idle_since``)."""
    s.delete(att)
    hm.refs = max(0, hm.refs - 1)
    if hm.refs == 0:
        hm.idle_since = now
    hm.updated_at = now
    log_event(
        s,
        "mount.release",
        actor,
        now,
        user=att.user,
        server=att.server,
        host=hm.host,
        mount=hm.key[:12],
        target=att.target,
        **detail,
    )
    s.flush()


def count_attachments(s: Session, hm: HostMount) -> int:
    return int(
        s.scalar(
            select(func.count(MountAttachment.id)).where(MountAttachment.host_mount_id == hm.id)
        )
        or 0
    )


def mount_events(s: Session, user: str | None = None, limit: int = 50) -> list[Event]:
    q = select(Event).where(Event.kind.like("mount.%")).order_by(Event.id.desc()).limit(limit)
    if user is not None:
        q = q.where(Event.user == user)
    return list(s.scalars(q))


__all__ = [
    "ATTACHED",
    "FAILED",
    "LOST",
    "MOUNTED",
    "MOUNTING",
    "RELEASING",
    "BucketFolder",
    "FolderExists",
    "FolderInUse",
    "FolderNotFound",
    "HostMount",
    "MountAttachment",
]
