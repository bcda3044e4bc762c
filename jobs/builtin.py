"""The built-in kinds' payload models, declared here so producers can validate them.

Their bodies live in the worker (``workers.builtin``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from jobs.backoff import Backoff
from jobs.kinds import declare

__all__ = ["HTTP_POST", "PG_REFRESH", "PG_VACUUM", "PING", "HttpPost", "PgRelation", "Ping"]

_QUALIFIED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class Ping(BaseModel):
    """No work; returns a small result. Health checks and benchmarks use it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    message: str = Field("pong", max_length=200)


class HttpPost(BaseModel):
    """POST a JSON body to a URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: AnyHttpUrl
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.scheme not in {"http", "https"}:
            raise ValueError("only http and https URLs are allowed")
        return value


class PgRelation(BaseModel):
    """A table or materialized view, optionally schema-qualified (``schema.name``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(max_length=127)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _QUALIFIED.match(value):
            raise ValueError("must be an identifier or schema.identifier")
        return value


PING = declare("ping", payload=Ping, description=Ping.__doc__ or "")
HTTP_POST = declare(
    "http.post",
    payload=HttpPost,
    max_attempts=5,
    backoff=Backoff(base=5.0, maximum=600.0),
    description="POST a JSON body to a URL; 5xx, timeouts and connection errors are retried, 4xx fails.",
)
PG_REFRESH = declare(
    "pg.refresh_materialized_view",
    payload=PgRelation,
    max_attempts=3,
    description="REFRESH MATERIALIZED VIEW on a view that exists in the catalog.",
)
PG_VACUUM = declare(
    "pg.vacuum_analyze",
    payload=PgRelation,
    max_attempts=3,
    description="VACUUM (ANALYZE) a table that exists in the catalog.",
)
