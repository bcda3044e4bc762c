"""Workflows: the workflows table, a job's place in one (workflow, step, unfinished parents,
inputs), the dependency edges between steps, and schedules that fire a workflow.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "workflows",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("submitted_by", sa.Text(), nullable=True),
        sa.Column("schedule_name", sa.Text(), nullable=True),
        sa.Column("schedule_slot", _TZ, nullable=True),
        sa.Column("created_at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
    )
    op.create_index("ix_workflows_created_at", "workflows", ["created_at"])
    op.create_index(
        "ix_workflows_schedule_slot",
        "workflows",
        ["schedule_name", "schedule_slot"],
        unique=True,
        postgresql_where=sa.text("schedule_name IS NOT NULL"),
    )
    # Nullable columns: no table rewrite; the counter has a constant default.
    op.add_column("jobs", sa.Column("workflow_id", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("step", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("pending", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("jobs", sa.Column("inputs", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_foreign_key(
        op.f("fk_jobs_workflow_id_workflows"),
        "jobs",
        "workflows",
        ["workflow_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_jobs_workflow_step",
        "jobs",
        ["workflow_id", "step", "created_at"],
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.create_check_constraint("pending", "jobs", "pending >= 0")
    op.create_table(
        "job_deps",
        sa.Column("child_id", sa.Uuid(), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("policy", sa.Text(), server_default="succeeded", nullable=False),
        sa.Column("resolved", sa.Text(), nullable=True),
        sa.CheckConstraint("policy IN ('succeeded', 'finished')", name=op.f("ck_job_deps_policy")),
        sa.ForeignKeyConstraint(
            ["child_id"], ["jobs.id"], name=op.f("fk_job_deps_child_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["jobs.id"], name=op.f("fk_job_deps_parent_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name=op.f("pk_job_deps")),
    )
    op.create_index("ix_job_deps_parent_id", "job_deps", ["parent_id"])
    # A schedule fires a job of a kind or a workflow (its spec as data): exactly one of the two.
    op.alter_column("schedules", "kind", existing_type=sa.Text(), nullable=True)
    op.add_column("schedules", sa.Column("workflow", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("schedules", sa.Column("last_workflow_id", sa.Uuid(), nullable=True))
    op.create_check_constraint("target", "schedules", "(kind IS NULL) <> (workflow IS NULL)")


def downgrade() -> None:
    """Downgrade schema: steps waiting for their parents are cancelled (their graph is gone), and
    schedules that fire a workflow are deleted (nothing could fire them)."""
    op.execute("DELETE FROM schedules WHERE workflow IS NOT NULL")
    op.drop_constraint(op.f("ck_schedules_target"), "schedules", type_="check")
    op.drop_column("schedules", "last_workflow_id")
    op.drop_column("schedules", "workflow")
    op.alter_column("schedules", "kind", existing_type=sa.Text(), nullable=False)
    op.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE state = 'held' AND pending > 0"
    )
    op.drop_table("job_deps")
    op.drop_constraint(op.f("ck_jobs_pending"), "jobs", type_="check")
    op.drop_index("ix_jobs_workflow_step", table_name="jobs")
    op.drop_constraint(op.f("fk_jobs_workflow_id_workflows"), "jobs", type_="foreignkey")
    op.drop_column("jobs", "inputs")
    op.drop_column("jobs", "pending")
    op.drop_column("jobs", "step")
    op.drop_column("jobs", "workflow_id")
    op.drop_index("ix_workflows_schedule_slot", table_name="workflows")
    op.drop_index("ix_workflows_created_at", table_name="workflows")
    op.drop_table("workflows")
