"""The one exception tree of the platform.

Every error the platform raises on purpose is a ``JobsError``; the CLI maps the
branches to exit codes (bad input: 2, infrastructure: 3) and prints one line.

::

    JobsError
    ├── BadInput                      exit 2: the caller can fix it
    │   ├── ConfigError               a JOBS_* setting is invalid
    │   ├── UnknownKind               no kind is registered under that name
    │   ├── InvalidPayload            the payload fails the kind's model
    │   ├── PayloadTooLarge           the serialized payload is over the limit
    │   ├── InvalidJobOptions         queue, priority, delay or attempts are off
    │   ├── IdempotencyConflict       the key is bound to a job of another kind or payload
    │   ├── DuplicateKind             a kind name is registered twice
    │   ├── JobNotFound               no job has that id
    │   ├── InvalidTransition         the job's state does not allow that action
    │   ├── InvalidSchedule           a schedule's name, timing, zone or policy is off
    │   ├── ScheduleNotFound          no schedule has that name
    │   ├── ScheduleConflict          the schedule exists, or is declared in code
    │   ├── InvalidLimit              a limit, unique window or debounce is off
    │   ├── LimitNotFound             no limit has that name
    │   ├── InvalidWorkflow           a workflow spec is off (a cycle, a missing step, ...)
    │   └── WorkflowNotFound          no workflow has that id
    └── InfrastructureError           exit 3: a server is unreachable
        ├── LedgerUnavailable         PostgreSQL
        └── BrokerUnavailable         Redis

Control flow is not failure: ``RetryLater`` and ``Fail`` are signals a job body
raises to steer its own outcome; they are not logged as errors.

Each class's docstring is its default message. ``ErrorRecord`` is how the
ledger stores an error (a job's ``error`` column, an attempt's).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

__all__ = [
    "BadInput",
    "BrokerUnavailable",
    "ConfigError",
    "DuplicateKind",
    "ErrorRecord",
    "Fail",
    "IdempotencyConflict",
    "InfrastructureError",
    "InvalidJobOptions",
    "InvalidLimit",
    "InvalidPayload",
    "InvalidSchedule",
    "InvalidTransition",
    "InvalidWorkflow",
    "JobNotFound",
    "JobsError",
    "LedgerUnavailable",
    "LimitNotFound",
    "PayloadTooLarge",
    "RetryLater",
    "ScheduleConflict",
    "ScheduleNotFound",
    "UnknownKind",
    "WorkflowNotFound",
]


class JobsError(Exception):
    """The jobs platform failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadInput(JobsError):
    """The input is invalid."""

    exit_code = 2


class ConfigError(BadInput):
    """A setting is invalid."""


class UnknownKind(BadInput):
    """No job kind is registered under that name."""


class InvalidPayload(BadInput):
    """The payload does not match the kind's model."""


class PayloadTooLarge(BadInput):
    """The payload is larger than the configured limit."""


class InvalidJobOptions(BadInput):
    """The job options are invalid."""


class IdempotencyConflict(BadInput):
    """The idempotency key is already bound to a job of another kind or with another payload."""


class DuplicateKind(BadInput):
    """A job kind with that name is already registered."""


class JobNotFound(BadInput):
    """No job has that id."""


class InfrastructureError(JobsError):
    """A server the platform needs is unreachable."""

    exit_code = 3


class LedgerUnavailable(InfrastructureError):
    """PostgreSQL (the ledger) is unreachable."""


class BrokerUnavailable(InfrastructureError):
    """Redis (the broker) is unreachable."""


class InvalidTransition(BadInput):
    """The job's state does not allow that action."""


class InvalidSchedule(BadInput):
    """The schedule is invalid."""


class ScheduleNotFound(BadInput):
    """No schedule has that name."""


class ScheduleConflict(BadInput):
    """The schedule cannot be changed that way."""


class InvalidLimit(BadInput):
    """The limit is invalid."""


class LimitNotFound(BadInput):
    """No limit has that name."""


class InvalidWorkflow(BadInput):
    """The workflow is invalid."""


class WorkflowNotFound(BadInput):
    """No workflow has that id."""


class RetryLater(Exception):
    """Raised by a job body to be run again later, counting an attempt."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Fail(Exception):
    """Raised by a job body to fail at once, without retries."""


class ErrorRecord(TypedDict):
    """An error as the ledger stores it: what went wrong, in one line, and where (when known)."""

    type: str
    message: str
    traceback: NotRequired[str]
