"""Idempotency keys and schedule slots unique through partial indexes.

A unique constraint indexes every row, NULLs included; most jobs have neither a
key nor a schedule, and each UPDATE of a job (claim, finish) that is not HOT
adds an entry to every index. Partial indexes skip those rows: measured with
``make bench``, about a fifth less WAL per job. Uniqueness is unchanged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index(
        "ix_jobs_idempotency_key",
        "jobs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_schedule_slot",
        "jobs",
        ["schedule_name", "schedule_slot"],
        unique=True,
        postgresql_where=sa.text("schedule_name IS NOT NULL"),
    )
    op.drop_constraint("uq_jobs_idempotency_key", "jobs", type_="unique")
    op.drop_constraint("uq_jobs_schedule_name_schedule_slot", "jobs", type_="unique")


def downgrade() -> None:
    """Downgrade schema."""
    op.create_unique_constraint(
        "uq_jobs_schedule_name_schedule_slot", "jobs", ["schedule_name", "schedule_slot"]
    )
    op.create_unique_constraint("uq_jobs_idempotency_key", "jobs", ["idempotency_key"])
    op.drop_index(
        "ix_jobs_schedule_slot", table_name="jobs", postgresql_where=sa.text("schedule_name IS NOT NULL")
    )
    op.drop_index(
        "ix_jobs_idempotency_key", table_name="jobs", postgresql_where=sa.text("idempotency_key IS NOT NULL")
    )
