"""Ledger upkeep: partial unique indexes, and autovacuum tuned for a queue table.

A unique constraint indexes every row, NULLs included; most jobs have neither a
key nor a schedule, and each UPDATE of a job (claim, finish) that is not HOT
adds an entry to every index. Partial indexes skip those rows: measured with
``make bench``, about a fifth less WAL per job. Uniqueness is unchanged.

Every job leaves dead row versions behind (claim and finish are non-HOT
updates: the state is indexed), so the default autovacuum threshold (20 % of
the table dead) lets a busy ledger bloat. ``jobs`` and ``job_attempts`` are
vacuumed after 1 % and analyzed after 2 % (the settings queue systems such as
River and good_job recommend for such tables). They do nothing on a server
whose ``autovacuum`` is off: ``jobs doctor`` warns about that.

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

TABLES = ("jobs", "job_attempts")
VACUUM_SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_analyze_threshold": "1000",
}
VACUUM_OPTIONS = ", ".join(f"{name} = {value}" for name, value in VACUUM_SETTINGS.items())


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
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET ({VACUUM_OPTIONS})")


def downgrade() -> None:
    """Downgrade schema."""
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(VACUUM_SETTINGS)})")
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
