"""The snapshot an archive recorded: a restore brings back exactly that one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Before this column, a restore took the user's newest complete snapshot; a later
``hometier backup`` of the archived (empty) home, or a replica whose clock ran ahead,
made that the notice file alone. Homes archived before this revision have no value
here; the restore then reads the snapshot id from their ``archived`` event.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("homes") as batch:
        batch.add_column(sa.Column("archived_snapshot", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("homes") as batch:
        batch.drop_column("archived_snapshot")
