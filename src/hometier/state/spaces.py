"""Shared spaces in the state database: the spaces, their declared members, who has
access now, their snapshots; and the queries that change them.

Terms (``hometier.spaces`` has the rest):

- A *space* is a shared folder on the spaces volume. Its *level* is ``public`` (every
  user reads), ``private`` (its members) or ``secret`` (its members; nobody else may learn
  that it exists). Its *kind* is ``data`` or ``software`` (a read-only collection with
  LMod module files). ``key`` is an opaque random name that never changes: the folder of a
  secret space, the owner of its snapshots, the prefix of its own repository.
- A *member* is declared: a JupyterHub user or group with the role ``reader`` or
  ``writer`` (``space_members``). JupyterHub groups are expanded by the reconcile loop.
- *Access* (``space_access``) is the expansion, one row per user, as it was last
  applied on the volume; comparing a new expansion with it yields the audit events
  ``space.grant``, ``space.revoke`` and ``space.role``.
- ``members_version`` grows on every change of what the volume must say (members, level,
  owner, quota state); ``applied_version`` is the version the ACLs on disk were written
  for. The reconcile loop re-applies until they are equal.

Space events go to the shared event log (``events``) with ``home_id`` empty and the
space's name in ``detail``; ``user`` is the user whom the event concerns (a grant), so
a user's log shows what they were given. Every function takes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from hometier.errors import Conflict, NotFound
from hometier.state.db import Database
from hometier.state.models import Base, Event

LEVELS: tuple[str, ...] = ("public", "private", "secret")
KINDS: tuple[str, ...] = ("data", "software")
ROLES: tuple[str, ...] = ("reader", "writer")
MEMBER_KINDS: tuple[str, ...] = ("user", "group")
SPACE_STATES: tuple[str, ...] = ("active", "archiving", "archived", "restoring", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


class Space(Base):
    """One shared folder; see the module docstring."""

    __tablename__ = "spaces"
    __table_args__ = (
        CheckConstraint(_in("level", LEVELS), name="level"),
        CheckConstraint(_in("kind", KINDS), name="kind"),
        CheckConstraint(_in("state", SPACE_STATES), name="state"),
        CheckConstraint("quota_bytes >= 0", name="quota"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key: Mapped[str] = mapped_column(String(40), unique=True)
    level: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16), default="data")
    owner: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    quota_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    gid: Mapped[int] = mapped_column(Integer, unique=True)
    path: Mapped[str] = mapped_column(Text)
    """The folder, relative to the spaces root (``NAME`` or ``.secret/KEY``)."""
    state: Mapped[str] = mapped_column(String(16), default="active")
    state_since: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer, default=1)
    members_version: Mapped[int] = mapped_column(Integer, default=1)
    applied_version: Mapped[int] = mapped_column(Integer, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_files: Mapped[int] = mapped_column(BigInteger, default=0)
    measured_at: Mapped[datetime | None]
    over_quota: Mapped[bool] = mapped_column(Boolean, default=False)
    last_activity: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
    restored_at: Mapped[datetime | None]
    exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<Space {self.id} {self.level} {self.state} v{self.version}>"


class SpaceMember(Base):
    """A declared member: a JupyterHub user or group and its role."""

    __tablename__ = "space_members"
    __table_args__ = (
        CheckConstraint(_in("kind", MEMBER_KINDS), name="kind"),
        CheckConstraint(_in("role", ROLES), name="role"),
    )

    space_id: Mapped[int] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    added_at: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(255))


class SpaceAccess(Base):
    """A user's access to a space as last applied on the volume."""

    __tablename__ = "space_access"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        Index(None, "user"),
    )

    space_id: Mapped[int] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    since: Mapped[datetime]


class SpaceSnapshot(Base):
    """A snapshot of a space in its repository."""

    __tablename__ = "space_snapshots"
    __table_args__ = (Index(None, "space_id", "time"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    time: Mapped[datetime]
    files: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class SpaceNotFound(NotFound):
    """No space named {} is visible to you."""


class SpaceExists(Conflict):
    """A space named {} already exists."""


class SpaceStateConflict(Conflict):
    """Space {} is {} (expected {})."""


Target = Database | Session


@contextmanager
def _session(target: Target, write: bool = True) -> Iterator[Session]:
    if isinstance(target, Session):
        yield target
    else:
        with target.transaction(write) as session:
            yield session


def log_event(
    s: Session,
    space: Space | None,
    kind: str,
    actor: str,
    now: datetime,
    *,
    user: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    **detail: Any,
) -> None:
    """Append a space event to the shared log (``kind`` starts with ``space.``)."""
    if space is not None:
        detail = {"space": space.name, "space_id": space.id, **detail}
    s.add(
        Event(
            home_id=None,
            user=user,
            at=now,
            kind=kind,
            actor=actor[:255],
            from_state=from_state,
            to_state=to_state,
            detail=detail or None,
        )
    )


# --- reading ---------------------------------------------------------------------


def get_space(target: Target, name: str) -> Space:
    """The space named ``name``; ``SpaceNotFound`` (visibility is the caller's check)."""
    with _session(target, write=False) as s:
        space = s.scalars(select(Space).where(Space.name == name)).one_or_none()
        if space is None:
            raise SpaceNotFound(name)
        return space


def get_space_by_id(target: Target, space_id: int) -> Space:
    with _session(target, write=False) as s:
        space = s.get(Space, space_id, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        return space


def list_spaces(target: Target) -> list[Space]:
    with _session(target, write=False) as s:
        return list(s.scalars(select(Space).order_by(Space.name)))


def members(target: Target, space_id: int) -> list[SpaceMember]:
    with _session(target, write=False) as s:
        q = select(SpaceMember).where(SpaceMember.space_id == space_id)
        return list(s.scalars(q.order_by(SpaceMember.kind, SpaceMember.name)))


def all_members(target: Target) -> dict[int, list[SpaceMember]]:
    with _session(target, write=False) as s:
        out: dict[int, list[SpaceMember]] = {}
        for m in s.scalars(select(SpaceMember)):
            out.setdefault(m.space_id, []).append(m)
        return out


def access(target: Target, space_id: int) -> dict[str, str]:
    """User → role, as last applied."""
    with _session(target, write=False) as s:
        q = select(SpaceAccess).where(SpaceAccess.space_id == space_id)
        return {a.user: a.role for a in s.scalars(q)}


def access_of(target: Target, user: str) -> dict[int, str]:
    """Space id → role of ``user`` (explicit access only; public spaces are implicit)."""
    with _session(target, write=False) as s:
        q = select(SpaceAccess).where(SpaceAccess.user == user)
        return {a.space_id: a.role for a in s.scalars(q)}


def space_snapshots(target: Target, space_id: int) -> list[SpaceSnapshot]:
    with _session(target, write=False) as s:
        q = select(SpaceSnapshot).where(SpaceSnapshot.space_id == space_id)
        return list(s.scalars(q.order_by(SpaceSnapshot.time.desc())))


def space_events(target: Target, space_id: int, limit: int = 100) -> list[Event]:
    """The space's audit log, newest first."""
    with _session(target, write=False) as s:
        q = select(Event).where(Event.kind.like("space.%")).order_by(Event.id.desc())
        # JSON querying differs between backends: filter in Python over a bounded window.
        out = []
        for e in s.scalars(q.limit(20000)):
            if (e.detail or {}).get("space_id") == space_id:
                out.append(e)
                if len(out) >= limit:
                    break
        return out


def used_gids(target: Target) -> set[int]:
    with _session(target, write=False) as s:
        return set(s.scalars(select(Space.gid)))


# --- changing --------------------------------------------------------------------


def create_space(
    target: Target,
    *,
    name: str,
    key: str,
    level: str,
    kind: str,
    owner: str,
    gid: int,
    path: str,
    quota_bytes: int,
    description: str,
    actor: str,
    now: datetime,
) -> Space:
    """Insert a space; ``SpaceExists`` if the name is taken."""
    with _session(target) as s:
        if s.scalars(select(Space.id).where(Space.name == name)).first() is not None:
            raise SpaceExists(name)
        space = Space(
            name=name,
            key=key,
            level=level,
            kind=kind,
            owner=owner,
            gid=gid,
            path=path,
            quota_bytes=quota_bytes,
            description=description,
            state="active",
            state_since=now,
            version=1,
            members_version=1,
            applied_version=0,
            used_bytes=0,
            used_files=0,
            over_quota=False,
            exempt=False,
            created_at=now,
            last_activity=now,
        )
        s.add(space)
        s.flush()
        log_event(s, space, "space.create", actor, now, level=level, space_kind=kind, owner=owner)
        return space


def update_space(target: Target, space_id: int, actor: str, now: datetime, **changes: Any) -> Space:
    """Change settings (level, path, owner, quota_bytes, description, exempt, over_quota,
    error); bumps ``members_version`` when the volume must change, logs what changed."""
    allowed = {"level", "path", "owner", "quota_bytes", "description", "exempt", "over_quota"}
    allowed |= {"error"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not a setting: {', '.join(sorted(unknown))}")
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        changed = {k: v for k, v in changes.items() if getattr(space, k) != v}
        if not changed:
            return space
        before = {k: getattr(space, k) for k in changed}
        for k, v in changed.items():
            setattr(space, k, v)
        if changed.keys() & {"level", "owner", "over_quota", "path"}:
            space.members_version += 1
        shown = {k: v for k, v in changed.items() if k != "error"}
        if shown:
            old = {k: before[k] for k in shown}
            log_event(s, space, "space.update", actor, now, changed=shown, before=old)
        return space


def delete_space(target: Target, space_id: int, actor: str, now: datetime) -> None:
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        for a in s.scalars(select(SpaceAccess).where(SpaceAccess.space_id == space_id)):
            log_event(s, space, "space.revoke", actor, now, user=a.user, role=a.role)
        log_event(s, space, "space.delete", actor, now)
        s.execute(delete(SpaceAccess).where(SpaceAccess.space_id == space_id))
        s.execute(delete(SpaceMember).where(SpaceMember.space_id == space_id))
        s.execute(delete(SpaceSnapshot).where(SpaceSnapshot.space_id == space_id))
        s.delete(space)


def set_members(
    target: Target,
    space_id: int,
    wanted: Iterable[tuple[str, str, str]],
    actor: str,
    now: datetime,
) -> bool:
    """Make the declared members exactly ``wanted`` ((kind, name, role) triples); logs
    each addition, removal and role change. True if anything changed."""
    want = {(k, n): r for k, n, r in wanted}
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        have = {
            (m.kind, m.name): m
            for m in s.scalars(select(SpaceMember).where(SpaceMember.space_id == space_id))
        }
        changed = False
        for key, m in have.items():
            if key not in want:
                s.delete(m)
                log_event(s, space, "space.member", actor, now, member=list(key), role=None)
                changed = True
            elif want[key] != m.role:
                log_event(s, space, "space.member", actor, now, member=list(key), role=want[key])
                m.role = want[key]
                changed = True
        for key, role in want.items():
            if key not in have:
                s.add(
                    SpaceMember(
                        space_id=space_id,
                        kind=key[0],
                        name=key[1],
                        role=role,
                        added_at=now,
                        added_by=actor[:255],
                    )
                )
                log_event(s, space, "space.member", actor, now, member=list(key), role=role)
                changed = True
        if changed:
            space.members_version += 1
        return changed


def record_access(
    target: Target,
    space_id: int,
    effective: dict[str, str],
    version: int,
    actor: str,
    now: datetime,
    *,
    reason: str = "",
) -> list[tuple[str, str | None, str | None]]:
    """Store ``effective`` (user → role) as what the volume now says, written for
    ``members_version == version``; logs ``space.grant``/``space.revoke``/``space.role``
    per user. Returns the changes (user, old role, new role)."""
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        rows = {
            a.user: a
            for a in s.scalars(select(SpaceAccess).where(SpaceAccess.space_id == space_id))
        }
        changes: list[tuple[str, str | None, str | None]] = []
        extra = {"reason": reason} if reason else {}
        for user, row in rows.items():
            if user not in effective:
                changes.append((user, row.role, None))
                log_event(s, space, "space.revoke", actor, now, user=user, role=row.role, **extra)
                s.delete(row)
            elif effective[user] != row.role:
                changes.append((user, row.role, effective[user]))
                log_event(
                    s,
                    space,
                    "space.role",
                    actor,
                    now,
                    user=user,
                    role=effective[user],
                    was=row.role,
                    **extra,
                )
                row.role = effective[user]
                row.since = now
        for user, role in effective.items():
            if user not in rows:
                changes.append((user, None, role))
                log_event(s, space, "space.grant", actor, now, user=user, role=role, **extra)
                s.add(SpaceAccess(space_id=space_id, user=user, role=role, since=now))
        space.applied_version = max(space.applied_version, version)
        return changes


def transition(
    target: Target,
    space_id: int,
    from_states: tuple[str, ...],
    to_state: str,
    actor: str,
    now: datetime,
    **fields: Any,
) -> Space:
    """Compare-and-set the space's state; ``SpaceStateConflict`` if it is elsewhere."""
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        if space.state not in from_states:
            raise SpaceStateConflict(space.name, space.state, " or ".join(from_states))
        before = space.state
        done = s.execute(
            update(Space)
            .where(Space.id == space_id, Space.version == space.version)
            .values(state=to_state, state_since=now, version=space.version + 1, **fields)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise SpaceStateConflict(space.name, "changing", " or ".join(from_states))
        s.refresh(space)
        log_event(s, space, "space.state", actor, now, from_state=before, to_state=to_state)
        return space


def record_snapshot(
    target: Target,
    space_id: int,
    *,
    snapshot_id: str,
    time: datetime,
    files: int,
    bytes: int,
    stored_bytes: int,
    now: datetime,
) -> None:
    with _session(target) as s:
        if s.get(SpaceSnapshot, snapshot_id) is None:
            s.add(
                SpaceSnapshot(
                    id=snapshot_id,
                    space_id=space_id,
                    time=time,
                    files=files,
                    bytes=bytes,
                    stored_bytes=stored_bytes,
                    created_at=now,
                )
            )


def record_usage(
    target: Target,
    space_id: int,
    used_bytes: int,
    used_files: int,
    newest: datetime | None,
    now: datetime,
) -> Space:
    with _session(target) as s:
        space = s.get(Space, space_id, with_for_update=True, populate_existing=True)
        if space is None:
            raise SpaceNotFound(f"#{space_id}")
        space.used_bytes, space.used_files, space.measured_at = used_bytes, used_files, now
        if newest is not None and (space.last_activity is None or newest > space.last_activity):
            space.last_activity = newest
        return space


def touch(target: Target, space_id: int, now: datetime) -> None:
    """Count a mount or an access as activity."""
    with _session(target) as s:
        s.execute(update(Space).where(Space.id == space_id).values(last_activity=now))


def count_spaces(target: Target) -> int:
    with _session(target, write=False) as s:
        return int(s.scalar(select(func.count(Space.id))) or 0)
