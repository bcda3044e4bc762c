"""Bodies of the built-in kinds (their payload models are in ``jobs.builtin``)."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from jobs import builtin
from jobs.context import JobContext
from jobs.errors import Fail
from jobs.kinds import registry

__all__ = ["http_post", "pg_refresh_materialized_view", "pg_vacuum_analyze", "ping"]

BODY_EXCERPT = 300


@registry.implement(builtin.PING.name)
def ping(ctx: JobContext, payload: builtin.Ping) -> dict[str, Any]:
    """Answer with the message, the attempt and where it ran."""
    return {
        "message": payload.message,
        "attempt": ctx.attempt,
        "host": platform.node(),
        "at": datetime.now(UTC).isoformat(),
    }


class ServerError(Exception):
    """The server answered 5xx: worth another attempt."""


@registry.implement(builtin.HTTP_POST.name)
def http_post(ctx: JobContext, payload: builtin.HttpPost) -> dict[str, Any]:
    """POST; 2xx/3xx succeed, 4xx fail at once, 5xx and network errors are retried."""
    import httpx  # here, not at import: 5 MiB in every worker process that never posts

    response = httpx.post(
        str(payload.url),
        json=payload.body,
        headers=payload.headers,
        timeout=payload.timeout,
        follow_redirects=False,
    )
    excerpt = response.text[:BODY_EXCERPT]
    if response.status_code >= 500:
        raise ServerError(f"HTTP {response.status_code} from {payload.url}: {excerpt}")
    if response.status_code >= 400:
        raise Fail(f"HTTP {response.status_code} from {payload.url}: {excerpt}")
    return {"status": response.status_code, "body": excerpt}


def _relation(ctx: JobContext, name: str, relkinds: tuple[str, ...], what: str) -> tuple[str, str]:
    """Look the relation up in the catalog; returns (schema, name) exactly as stored."""
    schema, _, relname = name.rpartition(".")
    row = ctx.session.execute(
        sa.text(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :relname AND c.relkind = ANY(:relkinds) "
            "AND (n.nspname = :schema OR (:schema = '' AND pg_catalog.pg_table_is_visible(c.oid)))"
        ),
        {"relname": relname, "schema": schema, "relkinds": list(relkinds)},
    ).first()
    if row is None:
        raise Fail(f"no {what} named {name!r} exists in the database")
    return str(row[0]), str(row[1])


def _quoted(ctx: JobContext, schema: str, name: str) -> str:
    preparer = ctx.session.get_bind().dialect.identifier_preparer
    return f"{preparer.quote_identifier(schema)}.{preparer.quote_identifier(name)}"


@registry.implement(builtin.PG_REFRESH.name)
def pg_refresh_materialized_view(ctx: JobContext, payload: builtin.PgRelation) -> dict[str, str]:
    """REFRESH MATERIALIZED VIEW, in the job's transaction (it commits with the job)."""
    schema, name = _relation(ctx, payload.name, ("m",), "materialized view")
    ctx.session.execute(sa.text(f"REFRESH MATERIALIZED VIEW {_quoted(ctx, schema, name)}"))
    return {"refreshed": f"{schema}.{name}"}


@registry.implement(builtin.PG_VACUUM.name)
def pg_vacuum_analyze(ctx: JobContext, payload: builtin.PgRelation) -> dict[str, str]:
    """VACUUM (ANALYZE) runs outside any transaction, so it uses its own autocommit connection."""
    schema, name = _relation(ctx, payload.name, ("r", "m", "p"), "table")
    target = _quoted(ctx, schema, name)
    ctx.session.rollback()
    engine = ctx.session.get_bind()
    assert isinstance(engine, sa.Engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"VACUUM (ANALYZE) {target}"))
    return {"vacuumed": f"{schema}.{name}"}
