"""Shared spaces: spaces, their declared members, applied access, their snapshots.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Matches ``hometier.state.spaces``; events of spaces use the existing ``events`` table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEVELS = ("public", "private", "secret")
KINDS = ("data", "software")
ROLES = ("reader", "writer")
MEMBER_KINDS = ("user", "group")
STATES = ("active", "archiving", "archived", "restoring", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


def _time(name: str, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "spaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=False),
        sa.Column("gid", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        _time("state_since", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("members_version", sa.Integer(), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("used_files", sa.BigInteger(), nullable=False),
        _time("measured_at", nullable=True),
        sa.Column("over_quota", sa.Boolean(), nullable=False),
        _time("last_activity", nullable=True),
        _time("archived_at", nullable=True),
        _time("restored_at", nullable=True),
        sa.Column("exempt", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        sa.CheckConstraint(_in("level", LEVELS), name=op.f("ck_spaces_level")),
        sa.CheckConstraint(_in("kind", KINDS), name=op.f("ck_spaces_kind")),
        sa.CheckConstraint(_in("state", STATES), name=op.f("ck_spaces_state")),
        sa.CheckConstraint("quota_bytes >= 0", name=op.f("ck_spaces_quota")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spaces")),
        sa.UniqueConstraint("name", name=op.f("uq_spaces_name")),
        sa.UniqueConstraint("key", name=op.f("uq_spaces_key")),
        sa.UniqueConstraint("gid", name=op.f("uq_spaces_gid")),
    )
    op.create_table(
        "space_members",
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        _time("added_at", nullable=False),
        sa.Column("added_by", sa.String(length=255), nullable=False),
        sa.CheckConstraint(_in("kind", MEMBER_KINDS), name=op.f("ck_space_members_kind")),
        sa.CheckConstraint(_in("role", ROLES), name=op.f("ck_space_members_role")),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_space_members_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "kind", "name", name=op.f("pk_space_members")),
    )
    op.create_table(
        "space_access",
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        _time("since", nullable=False),
        sa.CheckConstraint(_in("role", ROLES), name=op.f("ck_space_access_role")),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_space_access_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "user", name=op.f("pk_space_access")),
    )
    op.create_index(op.f("ix_space_access_user"), "space_access", ["user"])
    op.create_table(
        "space_snapshots",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("space_id", sa.Integer(), nullable=False),
        _time("time", nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        _time("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_space_snapshots_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_space_snapshots")),
    )
    op.create_index(
        op.f("ix_space_snapshots_space_id_time"), "space_snapshots", ["space_id", "time"]
    )


def downgrade() -> None:
    op.drop_table("space_snapshots")
    op.drop_table("space_access")
    op.drop_table("space_members")
    op.drop_table("spaces")
