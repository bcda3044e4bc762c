"""Retry backoff: exponential, with jitter, bounded. A pure policy object."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


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
