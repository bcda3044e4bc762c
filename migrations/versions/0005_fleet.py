"""The fleet: workers' roster, kinds the fleet implements, jobs handed back, brokers met.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    """Upgrade schema."""
    # A nullable column without a default: no table rewrite, no long lock on a big ledger.
    op.add_column("jobs", sa.Column("handed_back_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "workers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("kinds", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("pool", sa.Text(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    op.create_table(
        "fleet_kinds",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("last_seen_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_fleet_kinds")),
    )
    op.create_table(
        "broker_epochs",
        sa.Column("broker", sa.Text(), nullable=False),
        sa.Column("established_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("established_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("broker", name=op.f("pk_broker_epochs")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("broker_epochs")
    op.drop_table("fleet_kinds")
    op.drop_table("workers")
    op.drop_column("jobs", "handed_back_at")
