"""Settings of the state database itself: what it was created for.

A database describes the homes under one root and the snapshots in one repository. Run
against another root (a mistyped ``--homes``) it would register that folder's users and
archive them with the wrong history; run against another repository it would look for
snapshots that are not there. So the first process that uses a database *binds* it
(``homes_root``, ``repository_id``, ``repository_url``) and later ones compare: a
mismatch is refused by the caller (``lifecycle.binding``), unless the operator rebinds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from hometier.state.db import Database
from hometier.state.models import Base

HOMES_ROOT = "homes_root"
REPOSITORY_ID = "repository_id"
REPOSITORY_URL = "repository_url"


class Setting(Base):
    """One ``key → value`` of the database's own settings."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"<Setting {self.key}={self.value!r}>"


def get_settings(db: Database) -> dict[str, str]:
    with db.transaction(write=False) as s:
        return {row.key: row.value for row in s.scalars(select(Setting))}


def bind_setting(db: Database, key: str, value: str, now: datetime) -> str:
    """Store ``value`` under ``key`` unless one is stored already; return the stored one.

    Two processes binding at once: one insert wins, the other reads the winner's value.
    """
    with db.transaction() as s:
        row = s.get(Setting, key)
        if row is not None:
            return row.value
    try:
        with db.transaction() as s:
            s.add(Setting(key=key, value=value, updated_at=now))
        return value
    except DBIntegrityError:
        with db.transaction(write=False) as s:
            row = s.get(Setting, key)
            assert row is not None
            return row.value


def set_setting(db: Database, key: str, value: str, now: datetime) -> None:
    """Store ``value`` under ``key``, replacing what was there (a deliberate rebind).
    Another process inserting the key at the same moment makes this an update."""

    def put() -> None:
        with db.transaction() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value, updated_at=now))
            else:
                row.value, row.updated_at = value, now

    try:
        put()
    except DBIntegrityError:
        put()  # the row exists now: updated
