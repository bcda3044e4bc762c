"""Typed jobs on Celery, with PostgreSQL as the system of record.

The public surface for producers and for teams that declare kinds::

    import jobs

    @jobs.kind("images.resize", payload=Resize, queue="images")
    def resize(ctx: jobs.JobContext, p: Resize) -> dict[str, int]: ...

    job_id = jobs.submit("images.resize", {"image_id": 7, "width": 640})
"""

from jobs.backoff import Backoff
from jobs.context import JobContext
from jobs.errors import (
    BadInput,
    BrokerUnavailable,
    ConfigError,
    DuplicateKind,
    Fail,
    IdempotencyConflict,
    InfrastructureError,
    InvalidJobOptions,
    InvalidPayload,
    InvalidTransition,
    JobNotFound,
    JobsError,
    LedgerUnavailable,
    PayloadTooLarge,
    RetryLater,
    UnknownKind,
)
from jobs.kinds import Kind, declare, kind, registry
from jobs.producer import JobId, Producer, submit, submit_many
from jobs.settings import Settings, get_settings, load_settings

__all__ = [
    "Backoff",
    "BadInput",
    "BrokerUnavailable",
    "ConfigError",
    "DuplicateKind",
    "Fail",
    "IdempotencyConflict",
    "InfrastructureError",
    "InvalidJobOptions",
    "InvalidPayload",
    "InvalidTransition",
    "JobContext",
    "JobId",
    "JobNotFound",
    "JobsError",
    "Kind",
    "LedgerUnavailable",
    "PayloadTooLarge",
    "Producer",
    "RetryLater",
    "Settings",
    "UnknownKind",
    "declare",
    "get_settings",
    "kind",
    "load_settings",
    "registry",
    "submit",
    "submit_many",
]
