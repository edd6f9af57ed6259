"""The tables of the state database, as SQLAlchemy 2 typed models.

The migrations under ``migrations/versions/`` create exactly this schema; a contract test
compares the two on SQLite and PostgreSQL. Change a model only together with a new
revision.

Times are timezone-aware UTC in Python everywhere. PostgreSQL stores ``timestamptz``;
SQLite has no time zone, so ``UTCDateTime`` stores naive UTC text there and gives the zone
back on the way out. A naive datetime handed to the database is a programming error and
raises ``ValueError``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE = "active"
ARCHIVING = "archiving"
ARCHIVED = "archived"
RESTORING = "restoring"
FAILED = "failed"
HOME_STATES: tuple[str, ...] = (ACTIVE, ARCHIVING, ARCHIVED, RESTORING, FAILED)

# Stable constraint names on both backends, so migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (naive UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the state database takes aware times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Home(Base):
    """One user's home directory and where it is in its lifecycle.

    ``version`` grows by one on every state change; writers compare and set it
    (optimistic concurrency). ``claimed_by``/``claimed_until`` name the worker archiving
    the home; a claim that has run out may be taken over by another worker.
    """

    __tablename__ = "homes"
    __table_args__ = (
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in HOME_STATES)), name="state"
        ),
        CheckConstraint("version >= 1", name="version"),
        Index(None, "state", "last_activity"),
        # The admin table and the API sort 50,000 homes by these in the database.
        Index(None, "state_since"),
        Index(None, "last_activity"),
        Index(None, "hot_bytes"),
        Index(None, "stored_bytes"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    state_since: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer, default=1)
    hot_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    hot_files: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_activity: Mapped[datetime | None]
    last_activity_source: Mapped[str | None] = mapped_column(String(32))
    exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    exempt_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[datetime | None]
    restored_at: Mapped[datetime | None]
    quarantine_path: Mapped[str | None] = mapped_column(Text)
    archived_snapshot: Mapped[str | None] = mapped_column(String(128))
    """The snapshot the last archive recorded: what a restore of this home brings back."""
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime]

    @property
    def is_cold(self) -> bool:
        """True when the home's files live only in the repository (archived, not restored).

        A ``failed`` home is cold when it failed after being archived (during deletion or
        restore); a home that failed while archiving still has its files on the volume.
        """
        if self.state in (ARCHIVED, RESTORING):
            return True
        if self.archived_at is None:
            return False
        return self.restored_at is None or self.restored_at < self.archived_at

    def __repr__(self) -> str:
        return f"<Home {self.user} {self.state} v{self.version}>"


class Snapshot(Base):
    """A snapshot of a home in the repository; ``id`` is the repository's snapshot id."""

    __tablename__ = "snapshots"
    __table_args__ = (Index(None, "home_id", "time"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    home_id: Mapped[int] = mapped_column(ForeignKey("homes.id"))
    time: Mapped[datetime]
    files: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    tree: Mapped[str | None] = mapped_column(String(128))
    parent: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<Snapshot {self.id} home={self.home_id} {self.time.isoformat()}>"


class Lease(Base):
    """A claim by some consumer (job, extra server) that a home must stay hot.

    A lease is *active* while it is not released and ``expires_at`` is after now.
    """

    __tablename__ = "leases"
    __table_args__ = (Index(None, "home_id", "expires_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    home_id: Mapped[int] = mapped_column(ForeignKey("homes.id"))
    holder: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(Text, default="")
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    released_at: Mapped[datetime | None]

    def is_active(self, now: datetime) -> bool:
        return self.released_at is None and self.expires_at > now

    def __repr__(self) -> str:
        return f"<Lease {self.id} {self.holder} until {self.expires_at.isoformat()}>"


class Event(Base):
    """One line of the append-only log: a transition, lease, exemption or error.

    ``actor`` says who or what caused it (``archiver:host:pid``, ``api:alice``, ``cli``).
    ``user`` is kept beside ``home_id`` so the log reads without a join.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "user", "id"),
        Index(None, "at"),
        Index(None, "kind", "id"),  # the newest errors without reading the whole log
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    home_id: Mapped[int | None] = mapped_column(ForeignKey("homes.id"), index=True)
    user: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        move = f" {self.from_state}->{self.to_state}" if self.to_state else ""
        return f"<Event {self.id} {self.user} {self.kind}{move} by {self.actor}>"


# Tables of other topics live in their own modules; importing them here registers them
# on ``Base.metadata`` (what Alembic and the contract tests compare against).
from hometier.state import jobs as _jobs  # noqa: E402,F401
from hometier.state import mounts as _mounts  # noqa: E402,F401
from hometier.state import settings as _settings  # noqa: E402,F401
from hometier.state import spaces as _spaces  # noqa: E402,F401
from hometier.state import tierdays as _tierdays  # noqa: E402,F401
