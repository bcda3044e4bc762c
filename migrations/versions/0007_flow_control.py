"""Flow control: limits, the held state, limit slots and keys; unique and debounce keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_TZ = sa.DateTime(timezone=True)
_OLD_STATES = "'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'"
_NEW_STATES = "'scheduled', 'held', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    """Upgrade schema."""
    op.drop_constraint(op.f("ck_jobs_state"), "jobs", type_="check")
    op.create_check_constraint("state", "jobs", f"state IN ({_NEW_STATES})")
    # A NOT NULL column with a constant default and nullable ones: no table rewrite.
    op.add_column("jobs", sa.Column("limited", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("jobs", sa.Column("unique_key", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("debounce_key", sa.Text(), nullable=True))
    op.create_index("ix_jobs_held", "jobs", ["created_at"], postgresql_where=sa.text("state = 'held'"))
    op.create_index(
        "ix_jobs_unique_key",
        "jobs",
        ["unique_key", "created_at"],
        postgresql_where=sa.text("unique_key IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_debounce_key",
        "jobs",
        ["debounce_key"],
        postgresql_where=sa.text("debounce_key IS NOT NULL AND state = 'scheduled'"),
    )
    op.create_table(
        "limits",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.Column("queue", sa.Text(), nullable=True),
        sa.Column("key", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Integer(), nullable=True),
        sa.Column("period", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("declared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("updated_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("updated_by", sa.Text(), nullable=True),
        sa.CheckConstraint("(kind IS NULL) <> (queue IS NULL)", name=op.f("ck_limits_target")),
        sa.CheckConstraint("key IS NULL OR kind IS NOT NULL", name=op.f("ck_limits_key_needs_kind")),
        sa.CheckConstraint("(concurrency IS NULL) <> (rate IS NULL)", name=op.f("ck_limits_shape")),
        sa.CheckConstraint("concurrency IS NULL OR concurrency >= 1", name=op.f("ck_limits_concurrency")),
        sa.CheckConstraint("rate IS NULL OR (rate >= 1 AND period > 0)", name=op.f("ck_limits_rate")),
        sa.CheckConstraint("burst >= 0", name=op.f("ck_limits_burst")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_limits")),
    )
    op.create_table(
        "limit_slots",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("limit_name", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), server_default=sa.text("5"), nullable=False),
        sa.Column("fair", sa.Text(), server_default="", nullable=False),
        sa.Column("waiting_since", _TZ, server_default=_NOW, nullable=False),
        sa.Column("admitted_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_limit_slots_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["limit_name"],
            ["limits.name"],
            name=op.f("fk_limit_slots_limit_name_limits"),
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "limit_name", name=op.f("pk_limit_slots")),
    )
    op.create_index(
        "ix_limit_slots_waiting",
        "limit_slots",
        ["limit_name", "key", "priority", "waiting_since"],
        postgresql_where=sa.text("admitted_at IS NULL"),
    )
    op.create_index(
        "ix_limit_slots_fair",
        "limit_slots",
        ["limit_name", "key", "fair", "priority", "waiting_since"],
        postgresql_where=sa.text("admitted_at IS NULL"),
    )
    op.create_index(
        "ix_limit_slots_admitted",
        "limit_slots",
        ["limit_name", "key"],
        postgresql_where=sa.text("admitted_at IS NOT NULL"),
    )
    op.create_table(
        "limit_keys",
        sa.Column("limit_name", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("tat", _TZ, nullable=True),
        sa.Column("last_admitted_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["limit_name"],
            ["limits.name"],
            name=op.f("fk_limit_keys_limit_name_limits"),
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.PrimaryKeyConstraint("limit_name", "key", name=op.f("pk_limit_keys")),
    )


def downgrade() -> None:
    """Downgrade schema: held jobs go back to queued (their limits are gone)."""
    op.drop_table("limit_keys")
    op.drop_table("limit_slots")
    op.drop_table("limits")
    op.drop_index("ix_jobs_debounce_key", table_name="jobs")
    op.drop_index("ix_jobs_unique_key", table_name="jobs")
    op.drop_index("ix_jobs_held", table_name="jobs")
    op.drop_column("jobs", "debounce_key")
    op.drop_column("jobs", "unique_key")
    op.drop_column("jobs", "limited")
    op.execute("UPDATE jobs SET state = 'queued', published_at = NULL WHERE state = 'held'")
    op.drop_constraint(op.f("ck_jobs_state"), "jobs", type_="check")
    op.create_check_constraint("state", "jobs", f"state IN ({_OLD_STATES})")
