"""The ledger's tables: SQLAlchemy Core metadata, the target of the Alembic migrations.

``jobs`` (one row per accepted job) and ``job_attempts`` (one per attempt) are explained in
``docs/architecture.md``; ``schedules`` and ``maintenance_runs`` in ``docs/scheduling.md``;
``queue_pauses`` in ``docs/operations.md``; ``workers``, ``fleet_kinds`` (``jobs.roster``),
``broker_epochs`` (``beat.redrive``) and ``counters`` (``jobs.counters``) are the fleet's; ``limits``,
``limit_slots`` and ``limit_keys`` flow control's (``docs/flow-control.md``); ``workflows`` and
``job_deps`` the workflows' (``docs/workflows.md``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from jobs.states import STATES, TERMINAL_STATES

__all__ = [
    "STATES",
    "TERMINAL_STATES",
    "broker_epochs",
    "counters",
    "fleet_kinds",
    "job_attempts",
    "job_deps",
    "jobs",
    "limit_keys",
    "limit_slots",
    "limits",
    "maintenance_runs",
    "metadata",
    "queue_pauses",
    "schedules",
    "workers",
    "workflows",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_TZ = sa.DateTime(timezone=True)
_state_list = ", ".join(f"'{state}'" for state in STATES)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("not_before", _TZ),
    sa.Column("lease_until", _TZ),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("schedule_name", sa.Text),
    sa.Column("schedule_slot", _TZ),
    sa.Column("retry_of", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="SET NULL")),
    sa.Column("result", pg.JSONB),
    sa.Column("error", pg.JSONB),
    sa.Column("progress", pg.JSONB),
    sa.Column("worker", sa.Text),
    sa.Column("submitted_by", sa.Text),
    sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", _TZ),
    sa.Column("started_at", _TZ),
    sa.Column("finished_at", _TZ),
    # Set when a worker that does not implement the kind handed the job back: the relay publishes
    # it again only once a live worker implements the kind (jobs.roster, docs/architecture.md).
    sa.Column("handed_back_at", _TZ),
    # Flow control (docs/flow-control.md): the job has rows in ``limit_slots`` (it waits for, or
    # holds, a slot or a token of a limit); ``unique_key``/``debounce_key`` identify its content
    # for the kind's unique window and debounce.
    sa.Column("limited", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("unique_key", sa.Text),
    sa.Column("debounce_key", sa.Text),
    # Workflows (docs/workflows.md): the job's workflow and step, its parents not finished yet
    # (``held`` until none is left), the payload fields it takes from their results.
    sa.Column("workflow_id", sa.Uuid, sa.ForeignKey("workflows.id", ondelete="CASCADE")),
    sa.Column("step", sa.Text),
    sa.Column("pending", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("inputs", pg.JSONB),
    sa.CheckConstraint(f"state IN ({_state_list})", name="state"),
    sa.CheckConstraint("pending >= 0", name="pending"),
    sa.CheckConstraint("priority BETWEEN 0 AND 9", name="priority"),
    sa.CheckConstraint("attempt >= 0 AND max_attempts >= 1", name="attempts"),
    # Unique where set: partial indexes hold no entry for the many jobs without a key or a
    # schedule, which saves two index entries per row version (migration 0004).
    sa.Index(
        "ix_jobs_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index(
        "ix_jobs_schedule_slot",
        "schedule_name",
        "schedule_slot",
        unique=True,
        postgresql_where=sa.text("schedule_name IS NOT NULL"),
    ),
    # Operators list by state and time; the pruner walks old finished rows.
    sa.Index("ix_jobs_state_created_at", "state", "created_at"),
    # The stager: due delayed and retrying jobs.
    sa.Index(
        "ix_jobs_due",
        "not_before",
        postgresql_where=sa.text("state IN ('scheduled', 'retrying')"),
    ),
    # The relay: committed jobs never published.
    sa.Index(
        "ix_jobs_unpublished",
        "created_at",
        postgresql_where=sa.text("state = 'queued' AND published_at IS NULL"),
    ),
    # The republisher: queued jobs published long ago and still not taken.
    sa.Index("ix_jobs_queued_published", "published_at", postgresql_where=sa.text("state = 'queued'")),
    # The rescuer: running jobs whose lease expired.
    sa.Index("ix_jobs_lease", "lease_until", postgresql_where=sa.text("state = 'running'")),
    sa.Index("ix_jobs_retry_of", "retry_of", postgresql_where=sa.text("retry_of IS NOT NULL")),
    # Flow control: jobs held by a limit; the unique window's and debounce's look-ups.
    sa.Index("ix_jobs_held", "created_at", postgresql_where=sa.text("state = 'held'")),
    sa.Index(
        "ix_jobs_unique_key", "unique_key", "created_at", postgresql_where=sa.text("unique_key IS NOT NULL")
    ),
    sa.Index(
        "ix_jobs_debounce_key",
        "debounce_key",
        postgresql_where=sa.text("debounce_key IS NOT NULL AND state = 'scheduled'"),
    ),
    # A workflow's steps, newest job of each step last (a workflow retry adds jobs to a step).
    sa.Index(
        "ix_jobs_workflow_step",
        "workflow_id",
        "step",
        "created_at",
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    ),
)

job_attempts = sa.Table(
    "job_attempts",
    metadata,
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("worker", sa.Text),
    sa.Column("started_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", _TZ),
    sa.Column("outcome", sa.Text),
    sa.Column("error", pg.JSONB),
    sa.CheckConstraint(
        "outcome IN ('succeeded', 'error', 'lost', 'cancelled')",
        name="outcome",
    ),
)

# Schedules, edited while beat runs (docs/scheduling.md): each fires a job of ``kind`` with
# ``payload`` or a ``workflow`` (its spec as data), exactly one of the two.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("queue", sa.Text),
    sa.Column("priority", sa.SmallInteger),
    sa.Column("workflow", pg.JSONB(none_as_null=True)),
    sa.Column("cron", sa.Text),
    sa.Column("every_seconds", sa.Integer),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("misfire", sa.Text, nullable=False, server_default="once"),
    sa.Column("overlap", sa.Text, nullable=False, server_default="allow"),
    sa.Column("declared", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("handled_until", _TZ, nullable=False, server_default=sa.func.now()),  # slots dealt with
    sa.Column("last_slot", _TZ),
    sa.Column("last_fired_at", _TZ),
    sa.Column("last_job_id", sa.Uuid),
    sa.Column("last_workflow_id", sa.Uuid),  # a workflow's last firing (and last_job_id NULL)
    sa.Column("last_skip_at", _TZ),
    sa.Column("last_skip_reason", sa.Text),
    sa.Column("skipped", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_at", _TZ),
    sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_by", sa.Text),
    sa.CheckConstraint("(kind IS NULL) <> (workflow IS NULL)", name="target"),
    sa.CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="timing"),
    sa.CheckConstraint("every_seconds >= 1", name="every"),
    sa.CheckConstraint("priority BETWEEN 0 AND 9", name="priority"),
    sa.CheckConstraint("misfire IN ('skip', 'once', 'all')", name="misfire"),
    sa.CheckConstraint("overlap IN ('allow', 'skip')", name="overlap"),
)

# When each of the leader's maintenance loops last ran, for ``jobs schedule list``.
maintenance_runs = sa.Table(
    "maintenance_runs",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("interval_seconds", sa.Float, nullable=False),
    sa.Column("last_run_at", _TZ, nullable=False),
    sa.Column("last_result", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("leader", sa.Text),
)

# Paused queues: workers stop consuming them until resumed; kept here so a pause survives restarts.
queue_pauses = sa.Table(
    "queue_pauses",
    metadata,
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("paused_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("paused_by", sa.Text),
    sa.Column("reason", sa.Text),
)

# The fleet's roster: one row per worker process (by its unique node name), kept up to date by
# the worker's heartbeat; a row whose heartbeat is older than the roster's bound is a dead worker.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", pg.ARRAY(sa.Text), nullable=False),
    # {kind: version} of every kind this worker implements
    sa.Column("kinds", pg.JSONB, nullable=False),
    sa.Column("pool", sa.Text),
    sa.Column("concurrency", sa.Integer),
    sa.Column("started_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("heartbeat_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("stopped_at", _TZ),
)

# Every kind a worker of this fleet has ever implemented (kept when the workers go), so that a
# foreign message of a kind nobody ever implemented can be told from one of a kind that waits.
fleet_kinds = sa.Table(
    "fleet_kinds",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("first_seen_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("last_seen_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("last_seen_by", sa.Text),
)

# The brokers this ledger met: re-drive tells one that lost its data (no sentinel) from a new one.
broker_epochs = sa.Table(
    "broker_epochs",
    metadata,
    sa.Column("broker", sa.Text, primary_key=True),
    sa.Column("established_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("established_by", sa.Text),
)

# Totals for Prometheus (jobs.counters): every process that ends attempts adds what it counted,
# so the totals outlive the pruner, restarts and any exporter. One row per metric and labels;
# a histogram keeps one row per bucket (``le``: its upper bound, non-cumulative) and one for the
# sum of its observations (``le`` = 'sum'); plain counters have ``le`` = ''.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("outcome", sa.Text, primary_key=True),
    sa.Column("le", sa.Text, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
)

# Flow control (docs/flow-control.md). ``limits``: one row per limit, declared on a kind in code
# or set at runtime (``jobs limits``); it applies to a kind (optionally per value of a payload
# field, ``key``) or to a queue, and is either a concurrency cap or a rate (with a burst).
limits = sa.Table(
    "limits",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text),
    sa.Column("queue", sa.Text),
    sa.Column("key", pg.ARRAY(sa.Text)),
    sa.Column("concurrency", sa.Integer),
    sa.Column("rate", sa.Integer),
    sa.Column("period", sa.Float),
    sa.Column("burst", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("declared", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_by", sa.Text),
    sa.CheckConstraint("(kind IS NULL) <> (queue IS NULL)", name="target"),
    sa.CheckConstraint("key IS NULL OR kind IS NOT NULL", name="key_needs_kind"),
    sa.CheckConstraint("(concurrency IS NULL) <> (rate IS NULL)", name="shape"),
    sa.CheckConstraint("concurrency IS NULL OR concurrency >= 1", name="concurrency"),
    sa.CheckConstraint("rate IS NULL OR (rate >= 1 AND period > 0)", name="rate"),
    sa.CheckConstraint("burst >= 0", name="burst"),
)

# One row per (job, limit) while a limited job waits (``admitted_at`` NULL: the job is ``held``)
# or holds its admission (the job is ``queued`` or ``running``); gone when the job finishes or
# backs off for a retry. A concurrency cap's usage is its admitted rows (jobs.ledger.admission).
# ``priority`` is the job's; ``fair`` names the key of the job's first keyed limit
# ("limit<US>key", '' when none), by which a limit without a key serves keys round-robin.
limit_slots = sa.Table(
    "limit_slots",
    metadata,
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "limit_name",
        sa.Text,
        sa.ForeignKey("limits.name", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("5")),
    sa.Column("fair", sa.Text, nullable=False, server_default=""),
    sa.Column("waiting_since", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("admitted_at", _TZ),
    sa.Index(
        "ix_limit_slots_waiting",
        "limit_name",
        "key",
        "priority",
        "waiting_since",
        postgresql_where=sa.text("admitted_at IS NULL"),
    ),
    sa.Index(
        "ix_limit_slots_fair",
        "limit_name",
        "key",
        "fair",
        "priority",
        "waiting_since",
        postgresql_where=sa.text("admitted_at IS NULL"),
    ),
    sa.Index(
        "ix_limit_slots_admitted", "limit_name", "key", postgresql_where=sa.text("admitted_at IS NOT NULL")
    ),
)

# Per (limit, key): a rate limit's theoretical arrival time (GCRA) and when the key was last
# served (round-robin across keys). Written only under the limit's admission lock.
limit_keys = sa.Table(
    "limit_keys",
    metadata,
    sa.Column(
        "limit_name",
        sa.Text,
        sa.ForeignKey("limits.name", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("tat", _TZ),
    sa.Column("last_admitted_at", _TZ),
)

# One row per workflow (docs/workflows.md); its state is derived from its steps' jobs.
workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("submitted_by", sa.Text),
    sa.Column("schedule_name", sa.Text),
    sa.Column("schedule_slot", _TZ),
    sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_workflows_created_at", "created_at"),
    sa.Index(
        "ix_workflows_schedule_slot",
        "schedule_name",
        "schedule_slot",
        unique=True,
        postgresql_where=sa.text("schedule_name IS NOT NULL"),
    ),
)

# One row per dependency: ``position`` orders a child's parents; ``policy``: 'succeeded' (else
# the child is cancelled) or 'finished'; ``resolved``: the parent's end, once counted (once).
job_deps = sa.Table(
    "job_deps",
    metadata,
    sa.Column("child_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("parent_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("policy", sa.Text, nullable=False, server_default="succeeded"),
    sa.Column("resolved", sa.Text),
    sa.CheckConstraint("policy IN ('succeeded', 'finished')", name="policy"),
    sa.Index("ix_job_deps_parent_id", "parent_id"),
)
