"""Opening the state database: engines for SQLite and PostgreSQL, and migrations.

``open_database(url)`` builds the engine and brings the schema to the newest Alembic
revision (the migrations ship inside this package; no ``alembic.ini`` is read). It is safe
to call from several processes at once: on PostgreSQL the upgrade holds an advisory lock,
on SQLite the database's single writer lock.

SQLite is the embedded default and has one writer: every connection runs in WAL mode with
a busy timeout and foreign keys on, and write transactions start with ``BEGIN IMMEDIATE``
so that two writers queue instead of failing halfway (a deferred transaction that reads
and then writes can fail at once with "database is locked"). PostgreSQL (psycopg 3) is for
several workers; they claim work with row locks (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from hometier.errors import UsageError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option read by the SQLite "begin" hook: how to start a transaction.
_BEGIN = "hometier_sqlite_begin"
# Arbitrary constant naming the advisory lock that serializes migrations on PostgreSQL.
MIGRATION_LOCK_ID = 0x686F6D6574696572 & 0x7FFFFFFFFFFFFFFF


class UnsupportedDatabase(UsageError):
    """Unsupported state database URL {}: use sqlite:///PATH or postgresql://…"""


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, configured as described in the module.

    ``postgresql://`` without a driver means psycopg 3. ``sqlite://`` (in memory) shares
    one connection across threads. Raises ``UnsupportedDatabase`` for other backends.
    """
    try:
        url = make_url(url)
    except ArgumentError as exc:
        raise UnsupportedDatabase(str(url)) from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, **kwargs)
    if backend == "postgresql":
        if url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2
            url = url.set(drivername="postgresql+psycopg")
        kwargs.setdefault("pool_pre_ping", True)
        # A server that hangs rather than refusing must not hold a login for minutes:
        # give up connecting after 10 s (unless the URL says otherwise) and answer 503.
        if "connect_timeout" not in url.query:
            kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", 10)
        return create_engine(url, **kwargs)
    raise UnsupportedDatabase(url.render_as_string(hide_password=True))


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    if url.database in (None, "", ":memory:"):
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """An engine and the sessions made from it.

    ``transaction()`` is the unit every query runs in: one database transaction,
    committed when the block ends and rolled back when it raises. Sessions do not expire
    objects on commit, so rows returned by queries stay readable (detached) afterwards.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        writer = engine.execution_options(**{_BEGIN: "IMMEDIATE"})
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @property
    def url(self) -> URL:
        return self.engine.url

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Session]:
        """A session inside one transaction; ``write=False`` for read-only work.

        On SQLite a write transaction takes the database's write lock when it begins.
        """
        factory = self._write if write else self._read
        with factory() as session, session.begin():
            yield session

    def session(self) -> Session:
        """A session for callers who manage the transaction themselves (a writer's: on
        SQLite its transactions begin ``IMMEDIATE``)."""
        return self._write()

    def upgrade(self, revision: str = "head") -> None:
        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"<Database {self.url.render_as_string(hide_password=True)}>"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration for the packaged migrations, built in code.

    With ``connection``, ``env.py`` migrates through it (inside its transaction). Without
    it, ``env.py`` connects to the ``sqlalchemy.url`` option or ``HOMETIER_DB``; that is how
    a new revision is written: ``command.revision(cfg, "message", autogenerate=True)``.
    """
    from alembic.config import Config  # migrations only: keep the CLI's start-up light

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the schema to ``revision``, in one transaction (both backends have
    transactional DDL); concurrent callers wait for each other."""
    writer = engine.execution_options(**{_BEGIN: "IMMEDIATE"})
    from alembic import command

    with writer.connect() as conn:
        command.upgrade(alembic_config(conn), revision)
        conn.commit()


def open_database(url: str | URL, *, migrate: bool = True, **engine_kwargs: Any) -> Database:
    """Open the state database at ``url`` and upgrade its schema to the newest revision.

    Raises ``UnsupportedDatabase`` for a URL that is neither SQLite nor PostgreSQL; errors
    of the server (unreachable, authentication) propagate as SQLAlchemy errors.
    """
    db = Database(make_engine(url, **engine_kwargs))
    if migrate:
        try:
            db.upgrade()
        except BaseException:
            db.dispose()
            raise
    return db
