"""Jobs on behalf of users: job definitions, their runs and sealed secrets.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("schedule", sa.String(length=255), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        _time("run_at", nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("retry_delay", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=255), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("keep", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("paused_by", sa.String(length=255), nullable=True),
        _time("next_run_at", nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("user", "name", name=op.f("uq_jobs_user_name")),
    )
    op.create_index(op.f("ix_jobs_next_run_at"), "jobs", ["next_run_at"])
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        _time("scheduled_for", nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        _time("not_before", nullable=False),
        sa.Column("claimed_by", sa.String(length=255), nullable=True),
        _time("heartbeat_at", nullable=True),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("server_name", sa.String(length=255), nullable=True),
        sa.Column("server_started", sa.Boolean(), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=True),
        sa.Column("lease_id", sa.String(length=36), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _time("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_runs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.UniqueConstraint(
            "job_id",
            "scheduled_for",
            "attempt",
            name=op.f("uq_job_runs_job_id_scheduled_for_attempt"),
        ),
    )
    op.create_index(op.f("ix_job_runs_state_not_before"), "job_runs", ["state", "not_before"])
    op.create_index(op.f("ix_job_runs_job_id_id"), "job_runs", ["job_id", "id"])
    op.create_table(
        "job_secrets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_secrets")),
        sa.UniqueConstraint("user", "name", name=op.f("uq_job_secrets_user_name")),
    )


def downgrade() -> None:
    op.drop_table("job_secrets")
    op.drop_index(op.f("ix_job_runs_job_id_id"), table_name="job_runs")
    op.drop_index(op.f("ix_job_runs_state_not_before"), table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_index(op.f("ix_jobs_next_run_at"), table_name="jobs")
    op.drop_table("jobs")
