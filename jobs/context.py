"""What a job body receives beside its payload: who it is, a database session, progress and cancel."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ORM is imported only where sessions are made (the worker), to start fast
    from sqlalchemy.orm import Session

__all__ = ["JobContext"]


@dataclass(slots=True)
class JobContext:
    """The running attempt of a job.

    ``session`` is a SQLAlchemy session in the job's own transaction: what the
    body writes through it commits together with the job's success, and is
    rolled back if the attempt fails, is cancelled or its worker dies. It is
    opened the first time the body asks for it.
    """

    job_id: uuid.UUID
    kind: str
    attempt: int
    max_attempts: int
    logger: logging.Logger
    _open_session: Callable[[], Session] = field(repr=False)
    _report: Callable[[dict[str, Any]], None] = field(repr=False)
    _state: Callable[[], str | None] = field(repr=False)
    _session: Session | None = field(default=None, repr=False)

    @property
    def session(self) -> Session:
        """The job's session, opened on first use (a body that never uses it costs nothing)."""
        if self._session is None:
            self._session = self._open_session()
        return self._session

    @property
    def session_opened(self) -> Session | None:
        """The session if the body opened it, else ``None``."""
        return self._session

    @property
    def last_attempt(self) -> bool:
        """Whether a failure now is final."""
        return self.attempt >= self.max_attempts

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress; ``jobs status`` and ``jobs wait`` show the latest report."""
        self._report({"done": done, "total": total, "message": message})

    def cancelled(self) -> bool:
        """Whether an operator cancelled this job; a long body should check and return early."""
        return self._state() != "running"
