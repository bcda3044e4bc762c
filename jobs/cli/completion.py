"""Shell completion of the names operators type: kinds, queues, schedules, limits and workflows.

click completes the commands and options (``eval "$(_JOBS_COMPLETE=bash_source jobs)"``,
see docs/operations.md); the arguments and options that take a name use these
callbacks as their ``shell_complete=``. Kind names come from the registry (the
built-ins and ``JOBS_KIND_MODULES``); queue names from the kinds, the default
queue and the ledger (paused queues, schedules' queues, jobs' queues); schedule
and limit names, and workflows' ids and names, from the ledger.

Completion never fails and never hangs: what cannot be read (a kind module that
does not import, an invalid setting, PostgreSQL down or slow) is left out, and
the ledger gets at most ``LEDGER_BUDGET`` seconds, connecting included.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from jobs.cli import context
from jobs.states import STATES, TERMINAL_STATES

if TYPE_CHECKING:
    from jobs.kinds import Kind

__all__ = [
    "LEDGER_BUDGET",
    "kind_names",
    "limit_names",
    "queue_lists",
    "queue_names",
    "schedule_names",
    "workflow_ids",
    "workflow_names",
]

#: Seconds completion waits for the ledger before suggesting what it has without it, unless
#: ``JOBS_COMPLETION_BUDGET`` says otherwise.
LEDGER_BUDGET = 1.0
STATEMENT_TIMEOUT_MS = 400

LIVE_STATES = [state for state in STATES if state not in TERMINAL_STATES]

# Cheapest first: a huge jobs table may not answer the last one within the statement timeout.
QUEUE_QUERIES = (
    "SELECT queue FROM queue_pauses WHERE starts_with(queue, %(prefix)s)"
    " UNION SELECT queue FROM schedules WHERE starts_with(queue, %(prefix)s)",
    "SELECT DISTINCT queue FROM jobs WHERE state = ANY(%(live)s) AND starts_with(queue, %(prefix)s)",
    "SELECT DISTINCT queue FROM jobs WHERE starts_with(queue, %(prefix)s)",
)
SCHEDULE_QUERY = (
    "SELECT name, coalesce(kind, 'workflow ' || (workflow->>'name')) FROM schedules"
    " WHERE starts_with(name, %(prefix)s) ORDER BY name"
)
LIMIT_QUERY = (
    "SELECT name, coalesce(kind, 'queue ' || queue) FROM limits WHERE starts_with(name, %(prefix)s)"
    " ORDER BY name"
)
# The newest first: the workflow an operator just submitted is the one they ask about.
WORKFLOW_ID_QUERY = (
    "SELECT id::text, name FROM workflows WHERE starts_with(id::text, %(prefix)s)"
    " ORDER BY created_at DESC LIMIT 50"
)
WORKFLOW_NAME_QUERY = (
    "SELECT DISTINCT name FROM workflows WHERE starts_with(name, %(prefix)s) ORDER BY name LIMIT 100"
)


def _kinds() -> list[Kind]:
    """The registered kinds; if a kind module fails to import, those registered before it."""
    with contextlib.suppress(Exception):
        context.registry()
    from jobs.kinds import registry

    return list(registry)


def _read_ledger(queries: tuple[str, ...], params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of read-only queries, as many as the ledger returns within the completion budget.

    psycopg alone, not ``jobs.db``: importing SQLAlchemy takes longer than the
    whole completion should. Each query runs in its own transaction with a
    ``SET LOCAL`` timeout (safe behind PgBouncer); one that fails is skipped.
    """
    rows: list[tuple[Any, ...]] = []

    def read() -> None:
        import psycopg

        url = "postgresql://" + context.settings().database_url.partition("://")[2]
        with psycopg.connect(url, connect_timeout=2, application_name="jobs-completion") as conn:
            for query in queries:
                with contextlib.suppress(psycopg.Error), conn.transaction():
                    conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                    rows.extend(conn.execute(query, params).fetchall())

    def quietly(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with contextlib.suppress(Exception):  # never a traceback in the user's shell
                target()

        return run

    # A daemon thread, so that a ledger that does not answer cannot keep the shell waiting.
    reader = threading.Thread(target=quietly(read), name="jobs-completion", daemon=True)
    reader.start()
    budget = LEDGER_BUDGET
    with contextlib.suppress(Exception):  # settings that do not load: the default budget
        budget = context.settings().completion_budget
    reader.join(budget)
    return list(rows)


def kind_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Kinds whose name starts with ``incomplete``, each with its description."""
    return [
        CompletionItem(kind.name, help=kind.description or None)
        for kind in _kinds()
        if kind.name.startswith(incomplete)
    ]


def _queues(prefix: str) -> list[str]:
    found: set[str] = set()
    with contextlib.suppress(Exception):
        found.add(context.settings().default_queue)
    found.update(kind.queue for kind in _kinds() if kind.queue)
    params = {"prefix": prefix, "live": LIVE_STATES}
    found.update(str(row[0]) for row in _read_ledger(QUEUE_QUERIES, params) if row[0])
    return sorted(name for name in found if name.startswith(prefix))


def queue_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Queues whose name starts with ``incomplete``: the kinds', the default one and the ledger's."""
    return [CompletionItem(name) for name in _queues(incomplete)]


def queue_lists(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The last queue of a comma-separated list (``-Q default,images``), leaving out those given."""
    given, comma, last = incomplete.rpartition(",")
    chosen = set(given.split(",")) if comma else set()
    return [CompletionItem(given + comma + name) for name in _queues(last) if name not in chosen]


def schedule_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Schedules in the ledger whose name starts with ``incomplete``, each with its kind."""
    rows = _read_ledger((SCHEDULE_QUERY,), {"prefix": incomplete})
    return [CompletionItem(str(name), help=str(kind)) for name, kind in rows]


def limit_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Limits in the ledger whose name starts with ``incomplete``, each with what it limits."""
    rows = _read_ledger((LIMIT_QUERY,), {"prefix": incomplete})
    return [CompletionItem(str(name), help=str(target)) for name, target in rows]


def workflow_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The newest workflows whose id starts with ``incomplete``, each with its name."""
    rows = _read_ledger((WORKFLOW_ID_QUERY,), {"prefix": incomplete.lower()})
    return [CompletionItem(str(wid), help=str(name)) for wid, name in rows]


def workflow_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Names of workflows in the ledger that start with ``incomplete``."""
    return [
        CompletionItem(str(row[0])) for row in _read_ledger((WORKFLOW_NAME_QUERY,), {"prefix": incomplete})
    ]
