"""Typed jobs on Celery, with PostgreSQL as the system of record.

The public surface for producers and for teams that declare kinds::

    import jobs

    @jobs.kind("images.resize", payload=Resize, queue="images")
    def resize(ctx: jobs.JobContext, p: Resize) -> dict[str, int]: ...

    job_id = jobs.submit("images.resize", {"image_id": 7, "width": 640})
    workflow_id = jobs.submit_workflow(jobs.Workflow("thumbs", jobs.chain(...)))

Each name is imported on first use (PEP 562): ``import jobs``, and so every
``jobs`` command, loads neither SQLAlchemy nor pydantic nor Celery until needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        InvalidLimit,
        InvalidPayload,
        InvalidTransition,
        InvalidWorkflow,
        JobNotFound,
        JobsError,
        LedgerUnavailable,
        LimitNotFound,
        PayloadTooLarge,
        RetryLater,
        UnknownKind,
        WorkflowNotFound,
    )
    from jobs.kinds import Kind, declare, kind, registry
    from jobs.limits import Debounce, Limit, Unique
    from jobs.producer import JobId, Producer, submit, submit_many
    from jobs.settings import Settings, get_settings, load_settings
    from jobs.workflows import (
        Step,
        Workflow,
        WorkflowId,
        chain,
        chord,
        group,
        submit_canvas,
        submit_workflow,
    )

__all__ = [
    "Backoff",
    "BadInput",
    "BrokerUnavailable",
    "ConfigError",
    "Debounce",
    "DuplicateKind",
    "Fail",
    "IdempotencyConflict",
    "InfrastructureError",
    "InvalidJobOptions",
    "InvalidLimit",
    "InvalidPayload",
    "InvalidTransition",
    "InvalidWorkflow",
    "JobContext",
    "JobId",
    "JobNotFound",
    "JobsError",
    "Kind",
    "LedgerUnavailable",
    "Limit",
    "LimitNotFound",
    "PayloadTooLarge",
    "Producer",
    "RetryLater",
    "Settings",
    "Step",
    "Unique",
    "UnknownKind",
    "Workflow",
    "WorkflowId",
    "WorkflowNotFound",
    "chain",
    "chord",
    "declare",
    "get_settings",
    "group",
    "kind",
    "load_settings",
    "registry",
    "submit",
    "submit_canvas",
    "submit_many",
    "submit_workflow",
]

_ERRORS = (
    "BadInput BrokerUnavailable ConfigError DuplicateKind Fail IdempotencyConflict InfrastructureError "
    "InvalidJobOptions InvalidLimit InvalidPayload InvalidTransition InvalidWorkflow JobNotFound JobsError "
    "LedgerUnavailable LimitNotFound PayloadTooLarge RetryLater UnknownKind WorkflowNotFound"
)

#: Where each public name lives.
_HOMES = {
    "Backoff": "jobs.backoff",
    "JobContext": "jobs.context",
    **dict.fromkeys(_ERRORS.split(), "jobs.errors"),
    **dict.fromkeys(("Kind", "declare", "kind", "registry"), "jobs.kinds"),
    **dict.fromkeys(("Debounce", "Limit", "Unique"), "jobs.limits"),
    **dict.fromkeys(("JobId", "Producer", "submit", "submit_many"), "jobs.producer"),
    **dict.fromkeys(("Settings", "get_settings", "load_settings"), "jobs.settings"),
    **dict.fromkeys(
        (
            "Step",
            "Workflow",
            "WorkflowId",
            "chain",
            "chord",
            "group",
            "submit_canvas",
            "submit_workflow",
        ),
        "jobs.workflows",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
