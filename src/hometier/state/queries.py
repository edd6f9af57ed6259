"""Reading and changing the state database: the lifecycle of homes, leases and the log.

Every function takes a ``Database`` (it then runs in its own transaction, committed on
return and rolled back on error) or a ``Session`` (it then runs inside the caller's
transaction and commits nothing). Time is always a parameter, ``now``, timezone-aware.

Contracts that hold on SQLite and PostgreSQL alike:

- Every state change is one compare-and-set ``UPDATE … WHERE state IN (…) AND version = …``
  that bumps ``version``, and its event row is written in the same transaction. A lost
  race raises ``StateConflict`` and changes nothing.
- The event log is append-only: nothing here updates or deletes an event.
- Functions that decide from several rows (``finish_archive``, ``request_restore``,
  leases) first lock the home's row (``FOR UPDATE`` on PostgreSQL; SQLite's single writer
  lock otherwise), so each decision and its change are one atomic step.
- ``begin_archive_claim`` takes rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL: several
  workers never claim the same home.

Errors: ``HomeNotFound``, ``LeaseNotFound`` (404), ``StateConflict``, ``LeaseExpired``,
``SnapshotConflict`` (409); a naive ``now`` raises ``ValueError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from hometier.errors import Conflict, NotFound
from hometier.state.db import Database
from hometier.state.models import (
    ACTIVE,
    ARCHIVED,
    ARCHIVING,
    FAILED,
    HOME_STATES,
    RESTORING,
    Event,
    Home,
    Lease,
    Snapshot,
)


class HomeNotFound(NotFound):
    """No home is known for user {}."""


class StateConflict(Conflict):
    """Home of {} is {} (expected {})."""


class LeaseNotFound(NotFound):
    """No lease {} is known."""


class LeaseExpired(Conflict):
    """Lease {} was released or has expired."""


class SnapshotConflict(Conflict):
    """Snapshot {} is recorded for another home than the one of {}."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What the engine reports about a snapshot it wrote (``stored_bytes``: added bytes)."""

    id: str
    time: datetime
    files: int
    bytes: int
    stored_bytes: int
    tree: str | None = None
    parent: str | None = None


Target = Database | Session
# Columns that transition() may set besides the state; the rest are managed here.
SETTABLE = frozenset(
    {"path", "hot_bytes", "hot_files", "stored_bytes", "last_activity", "last_activity_source"}
    | {"error", "archived_at", "restored_at", "quarantine_path", "claimed_by", "claimed_until"}
    | {"archived_snapshot"}
)


@contextmanager
def _tx(target: Target, write: bool = True) -> Iterator[Session]:
    if isinstance(target, Session):
        yield target
    else:
        with target.transaction(write) as session:
            yield session


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware time (UTC)")
    return now


def _home(s: Session, user: str, lock: bool = False) -> Home:
    q = select(Home).where(Home.user == user)
    if lock:
        q = q.with_for_update()  # a no-op on SQLite, whose writer holds the whole database
    home = s.scalars(q.execution_options(populate_existing=True)).one_or_none()
    if home is None:
        raise HomeNotFound(user)
    return home


def _log(s: Session, home: Home | None, kind: str, actor: str, now: datetime, **kw: Any) -> None:
    s.add(
        Event(
            home_id=home.id if home else None,
            user=home.user if home else kw.pop("user", None),
            at=now,
            kind=kind,
            actor=actor,
            from_state=kw.pop("from_state", None),
            to_state=kw.pop("to_state", None),
            detail=kw or None,
        )
    )


def _active_lease(now: datetime) -> Any:
    return exists().where(
        Lease.home_id == Home.id, Lease.released_at.is_(None), Lease.expires_at > now
    )


def _cas(
    s: Session,
    home: Home,
    to_state: str,
    actor: str,
    now: datetime,
    *,
    from_states: tuple[str, ...] | None = None,
    version: int | None = None,
    kind: str = "state",
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> Home:
    """The one compare-and-set every state change goes through, plus its event.

    Compares with ``from_states`` and ``version``, by default the state and version of
    ``home`` as read (under the row lock, where the caller took it).
    """
    from_states = from_states or (home.state,)
    version = home.version if version is None else version
    before = home.state if home.state in from_states else from_states[0]
    values: dict[str, Any] = {"state": to_state, "version": Home.version + 1, "state_since": now}
    if to_state != FAILED:
        values["error"] = None
    if to_state != ARCHIVING:
        values.update(claimed_by=None, claimed_until=None)
    values.update(fields)
    stmt = (
        update(Home)
        .where(Home.id == home.id, Home.state.in_(from_states), Home.version == version)
        .values(values)
        .returning(Home)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    new = s.scalars(stmt).one_or_none()
    if new is None:
        state = s.scalar(select(Home.state).where(Home.id == home.id))
        expected = f"{' or '.join(from_states)} at version {version}"
        raise StateConflict(home.user, state, expected)
    _log(s, new, kind, actor, now, from_state=before, to_state=to_state, **(detail or {}))
    return new


# -- homes --------------------------------------------------------------------------------


def get_home(target: Target, user: str) -> Home:
    """The home of ``user``; raises ``HomeNotFound``."""
    with _tx(target, write=False) as s:
        return _home(s, user)


def get_homes(target: Target, users: Iterable[str]) -> dict[str, Home]:
    """The homes of those of ``users`` that exist, by user name (one statement)."""
    with _tx(target, write=False) as s:
        return {h.user: h for h in s.scalars(select(Home).where(Home.user.in_(list(users))))}


def get_or_create_home(
    target: Target, user: str, path: str, now: datetime, actor: str = "hometier"
) -> Home:
    """The home of ``user``, created ``active`` at ``path`` (with an event) if unknown.

    Idempotent and safe under concurrency (``INSERT … ON CONFLICT DO NOTHING``); an
    existing home keeps its path.
    """
    _aware(now)
    with _tx(target) as s:
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        stmt = (
            insert(Home)
            .values(user=user, path=path, state=ACTIVE, state_since=now, created_at=now)
            .on_conflict_do_nothing(index_elements=["user"])
            .returning(Home.id)
        )
        created = s.execute(stmt).scalar_one_or_none() is not None
        home = _home(s, user)
        if created:
            _log(s, home, "state", actor, now, to_state=ACTIVE, created=True, path=path)
        return home


def list_homes(
    target: Target,
    state: str | Iterable[str] | None = None,
    *,
    exempt: bool | None = None,
    quarantined: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Home]:
    """Homes ordered by user, optionally only in ``state`` (one or several), and only
    those with (``quarantined``) or without a quarantine folder recorded."""
    q = select(Home).order_by(Home.user).offset(offset).limit(limit)
    if state is not None:
        q = q.where(Home.state.in_([state] if isinstance(state, str) else list(state)))
    if exempt is not None:
        q = q.where(Home.exempt.is_(exempt))
    if quarantined is not None:
        q = q.where(
            Home.quarantine_path.is_not(None) if quarantined else Home.quarantine_path.is_(None)
        )
    with _tx(target, write=False) as s:
        return list(s.scalars(q))


def home_users(target: Target) -> set[str]:
    """Every user with a home row (one statement, for a cycle over thousands of homes)."""
    with _tx(target, write=False) as s:
        return set(s.scalars(select(Home.user)))


def record_activity(target: Target, user: str, at: datetime, source: str) -> bool:
    """Move ``last_activity`` forward to ``at`` (never back); True when it moved."""
    _aware(at)
    with _tx(target) as s:
        stmt = (
            update(Home)
            .where(Home.user == user)
            .where(or_(Home.last_activity.is_(None), Home.last_activity < at))
            .values(last_activity=at, last_activity_source=source)
            .returning(Home.id)
            .execution_options(synchronize_session=False)
        )
        if s.scalars(stmt).one_or_none() is not None:
            return True
        _home(s, user)  # HomeNotFound, or the known activity was newer
        return False


def set_sizes(target: Target, user: str, hot_bytes: int, hot_files: int) -> None:
    """Record the measured size of a home on the volume (not a state change)."""
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        home.hot_bytes, home.hot_files = hot_bytes, hot_files


def transition(
    target: Target,
    user: str,
    from_states: str | Iterable[str],
    to_state: str,
    actor: str,
    now: datetime,
    *,
    version: int | None = None,
    kind: str = "state",
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> Home:
    """Move the home of ``user`` from one of ``from_states`` to ``to_state``; the new row.

    One compare-and-set: it applies only if the state is still one of ``from_states`` and
    the version is ``version`` (default: the version read just before). Sets ``fields``
    (see ``SETTABLE``) in the same statement, writes the event in the same transaction.
    Leaving ``failed`` clears ``error``; leaving ``archiving`` clears the claim. Raises
    ``StateConflict`` (nothing changed) or ``HomeNotFound``.
    """
    froms = (from_states,) if isinstance(from_states, str) else tuple(from_states)
    if to_state not in HOME_STATES or not set(froms) <= set(HOME_STATES):
        raise ValueError(f"unknown home state in {froms} -> {to_state}")
    if unknown := set(fields) - SETTABLE:
        raise TypeError(f"transition() cannot set {sorted(unknown)}")
    _aware(now)
    with _tx(target) as s:
        home = _home(s, user)
        if version is None:
            if home.state not in froms:
                raise StateConflict(user, home.state, " or ".join(froms))
            version = home.version
        fields.update(from_states=froms, version=version, kind=kind, detail=detail)
        return _cas(s, home, to_state, actor, now, **fields)


def fail(
    target: Target,
    user: str,
    error: str,
    actor: str,
    now: datetime,
    from_states: str | Iterable[str] = HOME_STATES,
) -> Home:
    """Mark the home ``failed`` with ``error`` (an ``error`` event); drops any claim."""
    why = {"error": error}
    return transition(
        target, user, from_states, FAILED, actor, now, kind="error", detail=why, error=error
    )


# -- archiving ----------------------------------------------------------------------------


def begin_archive_claim(
    target: Target,
    worker: str,
    now: datetime,
    limit: int = 1,
    candidates: Iterable[str] | None = None,
    *,
    idle_before: datetime | None = None,
    claim_for: timedelta = timedelta(hours=1),
) -> list[Home]:
    """Claim up to ``limit`` homes for archiving and move them ``active -> archiving``.

    Only homes among ``candidates`` (users; None: any), not exempt, without an active
    lease and idle since before ``idle_before`` (if given) are taken, least recently
    active first. A home still ``archiving`` whose claim ran out (its worker died) is taken
    over. On PostgreSQL rows are locked with ``SKIP LOCKED``, so concurrent workers get
    disjoint homes; on SQLite the write transaction serializes them. Returns the claimed
    homes with their new ``version``, which ``finish_archive`` must be given.
    """
    _aware(now)
    q = select(Home).where(
        Home.exempt.is_(False),
        or_(Home.state == ACTIVE, and_(Home.state == ARCHIVING, Home.claimed_until < now)),
        ~_active_lease(now),
    )
    if candidates is not None:
        users = list(candidates)
        if not users:
            return []
        q = q.where(Home.user.in_(users))
    if idle_before is not None:
        q = q.where(or_(Home.last_activity.is_(None), Home.last_activity < idle_before))
    q = q.order_by(Home.last_activity.asc().nulls_first(), Home.id).limit(limit)
    with _tx(target) as s:
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True, of=Home)
        claimed = []
        for home in s.scalars(q.execution_options(populate_existing=True)).all():
            detail = {"worker": worker, "until": (now + claim_for).isoformat()}
            if home.state == ARCHIVING:
                detail["took_over_from"] = home.claimed_by or ""
            claim: dict[str, Any] = {"claimed_by": worker, "claimed_until": now + claim_for}
            claimed.append(_cas(s, home, ARCHIVING, worker, now, detail=detail, **claim))
        return claimed


def renew_claim(
    target: Target, user: str, worker: str, version: int, now: datetime, claim_for: timedelta
) -> bool:
    """Extend ``worker``'s claim on an ``archiving`` home; False if the claim is gone."""
    _aware(now)
    with _tx(target) as s:
        stmt = (
            update(Home)
            .where(Home.user == user, Home.state == ARCHIVING, Home.version == version)
            .where(Home.claimed_by == worker)
            .values(claimed_until=now + claim_for)
            .returning(Home.id)
            .execution_options(synchronize_session=False)
        )
        return s.scalars(stmt).one_or_none() is not None


def finish_archive(
    target: Target,
    user: str,
    worker: str,
    version: int,
    now: datetime,
    snapshot: SnapshotInfo,
    quarantine_path: str | None = None,
) -> bool:
    """Record ``snapshot`` and move the home ``archiving -> archived``: True if it moved.

    The one atomic step (under the home's row lock) before a home may be deleted from the
    volume. Returns False and changes no state unless the home is still ``archiving`` at
    ``version`` under ``worker``'s claim (a login cancelled the archive, or another worker
    took the claim over). If the home has an active lease or became exempt meanwhile, it
    goes back to ``active`` (an event says why) and False is returned. Otherwise it sets
    ``archived_at`` and the sizes from the snapshot and drops the claim. The snapshot row
    is recorded in every case: it is durable in the repository.
    """
    _aware(now)
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        _record_snapshot(s, home, snapshot, now)
        if home.state != ARCHIVING or home.version != version or home.claimed_by != worker:
            return False
        active = (Lease.home_id == home.id, Lease.released_at.is_(None), Lease.expires_at > now)
        leases = list(s.scalars(select(Lease.id).where(*active)))
        if leases or home.exempt:
            why = {"cancelled": "lease" if leases else "exempt", "leases": leases}
            _cas(s, home, ACTIVE, worker, now, detail=why)
            return False
        done: dict[str, Any] = {
            "archived_at": now,
            "quarantine_path": quarantine_path,
            "archived_snapshot": snapshot.id,
        }
        done.update(hot_bytes=snapshot.bytes, hot_files=snapshot.files)
        done.update(stored_bytes=snapshot.stored_bytes, detail={"snapshot": snapshot.id})
        _cas(s, home, ARCHIVED, worker, now, **done)
        return True


# -- restoring ----------------------------------------------------------------------------


def request_restore(target: Target, user: str, actor: str, now: datetime) -> Home | None:
    """Ask for the home's files to be hot; the home (now ``restoring``) if this call
    started a restore, else None.

    Idempotent: ``archived`` (or ``failed`` while cold) becomes ``restoring`` (started);
    ``archiving`` becomes ``active`` again, a login during archiving cancels the deletion;
    ``restoring`` is joined and ``active`` is left alone; ``failed`` while hot becomes
    ``active`` (none of these starts one). Raises ``HomeNotFound``.
    """
    _aware(now)
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        if home.state == ARCHIVED or (home.state == FAILED and home.is_cold):
            return _cas(s, home, RESTORING, actor, now)
        if home.state in (ARCHIVING, FAILED):
            # The request is activity: without it the next cycle would claim the home again.
            fields = _newer_activity(home, now)
            why = {"reason": "login during archiving cancels the deletion"}
            if home.state == FAILED:
                why = {"reason": "login while failed, files still on the volume"}
            _cas(s, home, ACTIVE, actor, now, detail=why, **fields)
        return None


def _newer_activity(home: Home, now: datetime) -> dict[str, Any]:
    if home.last_activity is not None and home.last_activity >= now:
        return {}
    return {"last_activity": now, "last_activity_source": "restore"}


def finish_restore(
    target: Target,
    user: str,
    actor: str,
    now: datetime,
    hot_bytes: int | None = None,
    hot_files: int | None = None,
) -> Home:
    """``restoring -> active``; sets ``restored_at`` and counts the restore as activity.

    Raises ``StateConflict`` if the home is not ``restoring``.
    """
    fields: dict[str, Any] = {"restored_at": now, "quarantine_path": None}
    if hot_bytes is not None:
        fields["hot_bytes"] = hot_bytes
    if hot_files is not None:
        fields["hot_files"] = hot_files
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        fields.update(_newer_activity(home, now))
        # The row just read under its lock is the one compared: no second read.
        return _cas(s, home, ACTIVE, actor, now, from_states=(RESTORING,), **fields)


# -- leases -------------------------------------------------------------------------------


def acquire_lease(
    target: Target,
    user: str,
    holder: str,
    purpose: str,
    duration: timedelta,
    now: datetime,
) -> Lease:
    """A new lease on the home of ``user`` until ``now + duration`` (a ``lease`` event).

    Taken under the home's row lock, so it is ordered with ``finish_archive``: either the
    archive completes first (the home is then ``archived`` and the caller restores it) or
    the archive sees the lease and is cancelled. Raises ``HomeNotFound``.
    """
    _aware(now)
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        lease = Lease(
            id=str(uuid.uuid4()),
            home_id=home.id,
            holder=holder,
            purpose=purpose,
            acquired_at=now,
            expires_at=now + duration,
        )
        s.add(lease)
        _log(
            s,
            home,
            "lease",
            holder,
            now,
            lease=lease.id,
            action="acquire",
            purpose=purpose,
            expires_at=lease.expires_at.isoformat(),
        )
        s.flush()
        return lease


def _lease(s: Session, lease_id: str) -> tuple[Lease, Home]:
    lease = s.get(Lease, lease_id, populate_existing=True)
    if lease is None:
        raise LeaseNotFound(lease_id)
    home = s.scalars(select(Home).where(Home.id == lease.home_id).with_for_update()).one()
    s.refresh(lease)  # read again under the home's lock
    return lease, home


def renew_lease(target: Target, lease_id: str, duration: timedelta, now: datetime) -> Lease:
    """Make an active lease last until ``now + duration``.

    Raises ``LeaseExpired`` if it was released or has expired (the home may have been
    archived since: take a new lease), ``LeaseNotFound`` if unknown.
    """
    _aware(now)
    with _tx(target) as s:
        lease, _ = _lease(s, lease_id)
        if not lease.is_active(now):
            raise LeaseExpired(lease_id)
        lease.expires_at = now + duration
        s.flush()
        return lease


def release_lease(target: Target, lease_id: str, now: datetime) -> bool:
    """Release a lease; True if this call released it (idempotent). ``LeaseNotFound``."""
    _aware(now)
    with _tx(target) as s:
        lease, home = _lease(s, lease_id)
        if lease.released_at is not None:
            return False
        lease.released_at = now
        _log(s, home, "lease", lease.holder, now, lease=lease.id, action="release")
        s.flush()
        return True


def active_leases(target: Target, user: str, now: datetime) -> list[Lease]:
    """Leases of ``user`` neither released nor expired at ``now``, oldest first."""
    _aware(now)
    with _tx(target, write=False) as s:
        home = _home(s, user)
        q = select(Lease).where(Lease.home_id == home.id, Lease.released_at.is_(None))
        q = q.where(Lease.expires_at > now).order_by(Lease.acquired_at, Lease.id)
        return list(s.scalars(q))


def active_lease_counts(target: Target, now: datetime) -> dict[str, int]:
    """User -> number of leases neither released nor expired at ``now`` (users without
    one are absent), in one grouped statement."""
    _aware(now)
    with _tx(target, write=False) as s:
        q = (
            select(Home.user, func.count(Lease.id))
            .join(Lease, Lease.home_id == Home.id)
            .where(Lease.released_at.is_(None), Lease.expires_at > now)
            .group_by(Home.user)
        )
        return {user: int(n) for user, n in s.execute(q)}


# -- exemptions, snapshots, events --------------------------------------------------------


def set_exempt(
    target: Target, user: str, exempt: bool, reason: str | None, actor: str, now: datetime
) -> Home:
    """Exempt a home from archiving (or lift it), with an ``exempt`` event.

    Not a state change (``version`` stays): an ``archiving`` home that becomes exempt is
    sent back to ``active`` by ``finish_archive``; an archived one stays archived.
    """
    _aware(now)
    with _tx(target) as s:
        home = _home(s, user, lock=True)
        home.exempt = exempt
        home.exempt_reason = reason if exempt else None
        _log(s, home, "exempt", actor, now, exempt=exempt, reason=reason)
        s.flush()
        return home


def _record_snapshot(s: Session, home: Home, info: SnapshotInfo, now: datetime) -> Snapshot:
    snap = s.get(Snapshot, info.id)
    if snap is not None:
        if snap.home_id != home.id:
            raise SnapshotConflict(info.id, home.user)
        return snap
    snap = Snapshot(home_id=home.id, created_at=now, **info.__dict__)
    s.add(snap)
    s.flush()
    return snap


def record_snapshot(target: Target, user: str, snapshot: SnapshotInfo, now: datetime) -> Snapshot:
    """Record a snapshot of the home of ``user``; idempotent by snapshot id.

    Raises ``SnapshotConflict`` if the id is recorded for another home, ``HomeNotFound``.
    """
    _aware(now)
    with _tx(target) as s:
        return _record_snapshot(s, _home(s, user), snapshot, now)


def list_snapshots(target: Target, user: str) -> list[Snapshot]:
    """Snapshots of the home of ``user``, newest first. Raises ``HomeNotFound``."""
    with _tx(target, write=False) as s:
        home = _home(s, user)
        q = select(Snapshot).where(Snapshot.home_id == home.id)
        return list(s.scalars(q.order_by(Snapshot.time.desc(), Snapshot.id)))


def events(
    target: Target,
    user: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    *,
    kind: str | None = None,
    newest_first: bool = False,
) -> list[Event]:
    """Events (of ``user``, at or after ``since``, of ``kind``) in log order."""
    q = select(Event)
    if user is not None:
        q = q.where(Event.user == user)
    if since is not None:
        q = q.where(Event.at >= _aware(since))
    if kind is not None:
        q = q.where(Event.kind == kind)
    q = q.order_by(Event.id.desc() if newest_first else Event.id).limit(limit)
    with _tx(target, write=False) as s:
        return list(s.scalars(q))


def forget_snapshots(target: Target, ids: Iterable[str]) -> int:
    """Drop the rows of snapshots that were deleted from the repository; returns how many."""
    wanted = list(ids)
    if not wanted:
        return 0
    with _tx(target) as s:
        rows = list(s.scalars(select(Snapshot).where(Snapshot.id.in_(wanted))))
        for row in rows:
            s.delete(row)
        return len(rows)


def lease_owner(target: Target, lease_id: str) -> str:
    """The user whose home a lease holds; ``LeaseNotFound``."""
    with _tx(target, write=False) as s:
        lease, home = _lease(s, lease_id)
        return home.user
