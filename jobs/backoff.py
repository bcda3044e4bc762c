"""Retries: the backoff (exponential, with jitter, bounded) and the decision a failed attempt leads to.

Both are pure: no I/O, no clock; unit-tested without a database (tests/unit/test_backoff.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff", "Decision", "decide"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait ``base * factor ** (attempt - 1)`` seconds, at most ``maximum``, spread by ``jitter``.

    ``jitter`` is a fraction: 0.25 spreads each delay uniformly over ±25 %, so
    jobs that failed together do not all come back at the same instant. The
    jittered delay never exceeds ``maximum``.
    """

    base: float = 2.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.base < 0 or self.maximum < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs base >= 0, maximum >= 0, factor >= 1 and 0 <= jitter <= 1")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        raw = min(self.maximum, self.base * self.factor ** min(exponent, 64))
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.maximum, max(0.0, raw * spread))


@dataclass(frozen=True, slots=True)
class Decision:
    """What a failed attempt leads to: another attempt after ``delay`` seconds, or the end."""

    retry: bool
    delay: float = 0.0


def decide(
    error: BaseException,
    *,
    attempt: int,
    max_attempts: int,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    always: tuple[type[BaseException], ...] = (),
    rand: Callable[[], float] = random.random,
) -> Decision:
    """The retry decision for attempt ``attempt`` (1-based) of ``max_attempts`` that raised ``error``.

    ``Fail`` ends the job; ``RetryLater`` asks for another attempt (after its
    own delay, if it gives one); any other error is retried when it is one of
    ``retry_on`` (the kind's) or of ``always`` (the worker's: a soft time
    limit), after the backoff's delay. Never more than ``max_attempts``.
    """
    from jobs.errors import Fail, RetryLater  # the exception tree: light, no I/O

    if isinstance(error, Fail):
        return Decision(retry=False)
    asked = error.delay if isinstance(error, RetryLater) else None
    retryable = isinstance(error, (RetryLater, *retry_on, *always))
    if not retryable or attempt >= max_attempts:
        return Decision(retry=False)
    return Decision(retry=True, delay=max(0.0, asked) if asked is not None else backoff.delay(attempt, rand))
