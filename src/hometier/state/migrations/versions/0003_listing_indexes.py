"""Indexes for listing 50,000 homes in the database, and the daily rollup of tiers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOME_COLUMNS = ("state_since", "last_activity", "hot_bytes", "stored_bytes")


def upgrade() -> None:
    for column in HOME_COLUMNS:
        op.create_index(f"ix_homes_{column}", "homes", [column])
    op.create_index("ix_events_kind_id", "events", ["kind", "id"])
    op.create_table(
        "tier_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("hot_bytes", sa.BigInteger(), nullable=False),
        sa.Column("archived_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("hot_homes", sa.BigInteger(), nullable=False),
        sa.Column("cold_homes", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_tier_days")),
    )


def downgrade() -> None:
    op.drop_table("tier_days")
    op.drop_index("ix_events_kind_id", table_name="events")
    for column in reversed(HOME_COLUMNS):
        op.drop_index(f"ix_homes_{column}", table_name="homes")
