"""The ledger: one row per job (jobs) and one per attempt (job_attempts).

Revision ID: 0001
Revises:
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("schedule_name", sa.Text(), nullable=True),
        sa.Column("schedule_slot", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_of", sa.Uuid(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("progress", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("submitted_by", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_state"),
        ),
        sa.CheckConstraint("attempt >= 0 AND max_attempts >= 1", name=op.f("ck_jobs_attempts")),
        sa.CheckConstraint("priority BETWEEN 0 AND 9", name=op.f("ck_jobs_priority")),
        sa.ForeignKeyConstraint(
            ["retry_of"], ["jobs.id"], name=op.f("fk_jobs_retry_of_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
        sa.UniqueConstraint(
            "schedule_name", "schedule_slot", name=op.f("uq_jobs_schedule_name_schedule_slot")
        ),
    )
    op.create_index(
        "ix_jobs_due",
        "jobs",
        ["not_before"],
        unique=False,
        postgresql_where=sa.text("state IN ('scheduled', 'retrying')"),
    )
    op.create_index(
        "ix_jobs_lease", "jobs", ["lease_until"], unique=False, postgresql_where=sa.text("state = 'running'")
    )
    op.create_index(
        "ix_jobs_queued_published",
        "jobs",
        ["published_at"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index(
        "ix_jobs_retry_of",
        "jobs",
        ["retry_of"],
        unique=False,
        postgresql_where=sa.text("retry_of IS NOT NULL"),
    )
    op.create_index("ix_jobs_state_created_at", "jobs", ["state", "created_at"], unique=False)
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("state = 'queued' AND published_at IS NULL"),
    )
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('succeeded', 'error', 'lost', 'cancelled')", name=op.f("ck_job_attempts_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_attempts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_job_attempts")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("job_attempts")
    op.drop_index(
        "ix_jobs_unpublished",
        table_name="jobs",
        postgresql_where=sa.text("state = 'queued' AND published_at IS NULL"),
    )
    op.drop_index("ix_jobs_state_created_at", table_name="jobs")
    op.drop_index("ix_jobs_retry_of", table_name="jobs", postgresql_where=sa.text("retry_of IS NOT NULL"))
    op.drop_index("ix_jobs_queued_published", table_name="jobs", postgresql_where=sa.text("state = 'queued'"))
    op.drop_index("ix_jobs_lease", table_name="jobs", postgresql_where=sa.text("state = 'running'"))
    op.drop_index(
        "ix_jobs_due", table_name="jobs", postgresql_where=sa.text("state IN ('scheduled', 'retrying')")
    )
    op.drop_table("jobs")
