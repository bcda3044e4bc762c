"""The one typed settings object.

Every ``JOBS_*`` environment variable (or line of a ``.env`` file) lands here,
is validated once at start-up, and is passed down. Nothing else in the
platform reads the environment.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobs.errors import ConfigError

__all__ = ["Settings", "get_settings", "load_settings"]

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of every platform process (CLI, producer, worker, beat)."""

    model_config = SettingsConfigDict(
        env_prefix="JOBS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/jobs",
        description="PostgreSQL URL of the ledger (the system of record).",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/5",
        description="Redis URL of the Celery broker (transport only).",
    )
    default_queue: str = Field("default", min_length=1, description="Queue of kinds that name none.")
    celery_queue: str = Field(
        "celery",
        description=(
            "Celery's own default queue, where a plain send_task() without a queue lands: workers"
            " consume it too and adopt its messages ('' to leave it alone)."
        ),
    )
    kind_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules that declare your own job kinds.",
    )

    soft_time_limit: float = Field(240.0, gt=0, description="Default soft time limit of a job, seconds.")
    hard_time_limit: float = Field(300.0, gt=0, description="Default hard time limit of a job, seconds.")
    max_attempts: int = Field(5, ge=1, le=1000, description="Default attempts per job.")
    max_payload_bytes: int = Field(MiB, gt=0, description="Largest accepted payload (JSON bytes).")

    visibility_timeout: float = Field(
        3600.0, gt=0, description="Redis redelivers an unacked message after this many seconds."
    )
    lease_margin: float = Field(
        60.0, ge=0, description="A running job's lease is its hard limit plus this margin, seconds."
    )
    retention_succeeded: float = Field(
        7 * 86400.0, gt=0, description="Keep succeeded and cancelled jobs this long, seconds."
    )
    retention_failed: float = Field(30 * 86400.0, gt=0, description="Keep failed jobs this long, seconds.")

    leader_tick: float = Field(1.0, gt=0, description="Seconds between two leader maintenance ticks.")
    leader_takeover: float = Field(
        5.0, gt=0, description="A standby takes over at most this many seconds after the leader dies."
    )
    schedule_grace: float = Field(
        60.0, ge=0, description="A schedule slot seen later than this after its time counts as missed."
    )
    schedule_catchup: float = Field(
        3600.0, ge=0, description="misfire=all fires missed slots up to this many seconds back."
    )
    admit_interval: float = Field(
        0.25,
        gt=0,
        description="At most this many seconds between two admission rounds of the leader (its safety net).",
    )
    relay_grace: float = Field(
        5.0, ge=0, description="A committed job not published after this many seconds is relayed."
    )
    republish_after: float = Field(
        900.0, gt=0, description="A queued job no worker took for this many seconds is published again."
    )
    publish_timeout: float = Field(2.0, gt=0, description="Seconds to wait for Redis when publishing.")

    worker_max_memory_per_child: int = Field(
        512_000, gt=0, description="Recycle a pool child past this resident memory, KiB."
    )
    worker_soft_shutdown_timeout: float = Field(
        30.0, ge=0, description="On SIGTERM, running jobs get this many seconds to finish."
    )
    pause_poll: float = Field(
        5.0, gt=0, description="Workers read the paused queues at least this often, seconds."
    )
    worker_heartbeat: float = Field(
        5.0,
        gt=0,
        description=(
            "Workers write a heartbeat to the ledger's roster this often, seconds; a worker silent for"
            " three heartbeats is presumed dead."
        ),
    )
    worker_task_events: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Celery task events (what Flower shows): 'auto' sends them while an event consumer such"
            " as Flower asks for them, 'on' always, 'off' only when asked (Celery's default)."
        ),
    )
    worker_stall_timeout: float = Field(
        30.0,
        ge=0,
        description=(
            "A worker with room for jobs that takes none while its queues hold messages for this long"
            " reconnects to Redis, seconds (0 turns the check off)."
        ),
    )

    worker_batch_size: int = Field(
        32,
        ge=1,
        le=1000,
        description=(
            "jobs worker -P batched and --batches: the most messages one worker process claims, runs"
            " and records as one batch."
        ),
    )
    worker_batch_window: float = Field(
        0.005,
        ge=0,
        le=1,
        description=(
            "jobs worker -P batched and --batches: seconds a batch waits, from its first message, for"
            " more when messages arrive close together (one arriving alone runs at once; 0: never wait)."
        ),
    )
    worker_batched: bool = Field(
        False,
        description=(
            "Set by jobs worker -P batched for the worker processes it supervises (not by hand):"
            " the process claims, runs and records its jobs in batches."
        ),
    )
    worker_pool_batches: bool = Field(
        False,
        description=(
            "Set by jobs worker --batches (not by hand): the prefork worker's pool processes claim,"
            " run and record its jobs in batches."
        ),
    )

    flower_user: str | None = Field(None, description="Flower basic-auth user.")
    flower_password: SecretStr | None = Field(None, description="Flower basic-auth password.")
    flower_address: str = Field("127.0.0.1", description="Address Flower binds to.")
    flower_port: int = Field(5555, gt=0, lt=65536, description="Port Flower listens on.")
    metrics_address: str = Field("127.0.0.1", description="Address `jobs metrics` binds to.")
    metrics_port: int = Field(9808, gt=0, lt=65536, description="Port `jobs metrics` serves /metrics on.")

    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    completion_budget: float = Field(
        1.0, gt=0, description="Seconds shell completion waits for the ledger, connecting included."
    )

    @field_validator("kind_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in {"postgresql", "postgres", "postgresql+psycopg"}:
            raise ValueError("must be a postgresql:// URL")
        return f"postgresql+psycopg://{rest}"

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "redis+socket://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        if value.startswith("rediss://") and "ssl_cert_reqs=" not in value:
            # kombu would connect without checking the server's certificate, with only a warning.
            raise ValueError(
                "a rediss:// URL must say how to check certificates: add ?ssl_cert_reqs=required"
            )
        return value

    @model_validator(mode="after")
    def _limits_fit(self) -> Self:
        if self.soft_time_limit >= self.hard_time_limit:
            raise ValueError(
                "JOBS_SOFT_TIME_LIMIT must be below JOBS_HARD_TIME_LIMIT "
                f"({self.soft_time_limit:g} >= {self.hard_time_limit:g})"
            )
        if self.visibility_timeout <= self.hard_time_limit + self.lease_margin:
            raise ValueError(
                "JOBS_VISIBILITY_TIMEOUT must exceed JOBS_HARD_TIME_LIMIT + JOBS_LEASE_MARGIN "
                f"({self.visibility_timeout:g} <= {self.hard_time_limit + self.lease_margin:g}), "
                "or Redis redelivers jobs that are still running"
            )
        return self

    @property
    def worker_dead_after(self) -> float:
        """Seconds without a heartbeat after which the roster counts a worker as dead."""
        return 3 * self.worker_heartbeat

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds a job when its kind sets no hard limit."""
        return self.hard_time_limit + self.lease_margin


def _explain(error: ValidationError) -> str:
    """One line naming the first offending variable and what is wrong."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not field:
        return message
    return f"JOBS_{field.upper()}={first.get('input')!s:.60}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, or raise ``ConfigError`` with one clear line.

    ``overrides`` are validated as the environment's values are, so they may be
    given as text (``"30"``) or as their own types.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(f"invalid setting {_explain(error)}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()
