"""Initial schema: homes, snapshots, leases and the event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written from ``alembic revision --autogenerate`` and checked by hand: times are plain
``DateTime(timezone=True)`` here (``timestamptz`` on PostgreSQL, text on SQLite), the models'
``UTCDateTime`` only converts at the Python boundary, so this file does not import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOME_STATES = ("active", "archiving", "archived", "restoring", "failed")


def _time(name: str, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "homes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        _time("state_since", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("hot_bytes", sa.BigInteger(), nullable=False),
        sa.Column("hot_files", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        _time("last_activity", nullable=True),
        sa.Column("last_activity_source", sa.String(length=32), nullable=True),
        sa.Column("exempt", sa.Boolean(), nullable=False),
        sa.Column("exempt_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("archived_at", nullable=True),
        _time("restored_at", nullable=True),
        sa.Column("quarantine_path", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=255), nullable=True),
        _time("claimed_until", nullable=True),
        _time("created_at", nullable=False),
        sa.CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in HOME_STATES)),
            name=op.f("ck_homes_state"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_homes_version")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_homes")),
        sa.UniqueConstraint("user", name=op.f("uq_homes_user")),
    )
    op.create_index(op.f("ix_homes_state_last_activity"), "homes", ["state", "last_activity"])

    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("home_id", sa.Integer(), nullable=False),
        _time("time", nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tree", sa.String(length=128), nullable=True),
        sa.Column("parent", sa.String(length=128), nullable=True),
        _time("created_at", nullable=False),
        sa.ForeignKeyConstraint(["home_id"], ["homes.id"], name=op.f("fk_snapshots_home_id_homes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    op.create_index(op.f("ix_snapshots_home_id_time"), "snapshots", ["home_id", "time"])

    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("home_id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        _time("acquired_at", nullable=False),
        _time("expires_at", nullable=False),
        _time("released_at", nullable=True),
        sa.ForeignKeyConstraint(["home_id"], ["homes.id"], name=op.f("fk_leases_home_id_homes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
    )
    op.create_index(op.f("ix_leases_home_id_expires_at"), "leases", ["home_id", "expires_at"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("home_id", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=True),
        _time("at", nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["home_id"], ["homes.id"], name=op.f("fk_events_home_id_homes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"])
    op.create_index(op.f("ix_events_home_id"), "events", ["home_id"])
    op.create_index(op.f("ix_events_user_id"), "events", ["user", "id"])


def downgrade() -> None:
    # Dropping a table drops its indexes on both backends.
    op.drop_table("events")
    op.drop_table("leases")
    op.drop_table("snapshots")
    op.drop_table("homes")
