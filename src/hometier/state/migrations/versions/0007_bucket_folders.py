"""Bucket folders: registered folders, host mounts and their attachments.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

The models are in ``hometier.state.mounts``; the contract test compares this schema with
them on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOUNT_STATES = ("mounting", "mounted", "failed")
ATTACHMENT_STATES = ("attached", "releasing", "lost")


def _time(name: str, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _in(column: str, values: tuple[str, ...]) -> str:
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    op.create_table(
        "bucket_folders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=True),
        sa.Column("access", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("mount_path", sa.Text(), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bucket_folders")),
        sa.UniqueConstraint("name", name=op.f("uq_bucket_folders_name")),
    )
    op.create_table(
        "host_mounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("folder_revision", sa.Integer(), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("uid", sa.Integer(), nullable=False),
        sa.Column("gid", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("refs", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        _time("idle_since", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.CheckConstraint(_in("state", MOUNT_STATES), name=op.f("ck_host_mounts_state")),
        sa.CheckConstraint("refs >= 0", name=op.f("ck_host_mounts_refs")),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["bucket_folders.id"],
            name=op.f("fk_host_mounts_folder_id_bucket_folders"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_mounts")),
        sa.UniqueConstraint("host", "key", name=op.f("uq_host_mounts_host_key")),
    )
    op.create_index(op.f("ix_host_mounts_folder_id"), "host_mounts", ["folder_id"])
    op.create_table(
        "mount_attachments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host_mount_id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("server", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("mount_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("acquired_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.CheckConstraint(
            _in("state", ATTACHMENT_STATES), name=op.f("ck_mount_attachments_state")
        ),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["bucket_folders.id"],
            name=op.f("fk_mount_attachments_folder_id_bucket_folders"),
        ),
        sa.ForeignKeyConstraint(
            ["host_mount_id"],
            ["host_mounts.id"],
            name=op.f("fk_mount_attachments_host_mount_id_host_mounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mount_attachments")),
        sa.UniqueConstraint(
            "host_mount_id",
            "user",
            "server",
            name=op.f("uq_mount_attachments_host_mount_id_user_server"),
        ),
    )
    op.create_index(
        op.f("ix_mount_attachments_host_mount_id"), "mount_attachments", ["host_mount_id"]
    )
    op.create_index(
        op.f("ix_mount_attachments_user_server"), "mount_attachments", ["user", "server"]
    )


def downgrade() -> None:
    op.drop_table("mount_attachments")
    op.drop_table("host_mounts")
    op.drop_table("bucket_folders")
