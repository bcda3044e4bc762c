"""The benchmark's own kind: ``bench.pause``, a body that takes a few milliseconds (flow control's
slot latency, ``tests.bench.flow``).

Loaded through ``JOBS_KIND_MODULES`` (``tests.bench.__main__`` adds this module), by the
benchmark's producer and by its workers. It declares no limit: the benchmark sets them at
runtime, as an operator would.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

import jobs

__all__ = ["PAUSE", "Pause", "pause"]

PAUSE = "bench.pause"


class Pause(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ms: float = Field(5.0, ge=0, le=10_000)


@jobs.kind(PAUSE, payload=Pause, max_attempts=1)
def pause(ctx: jobs.JobContext, payload: Pause) -> dict[str, float]:
    """Sleep ``ms`` milliseconds and return them."""
    time.sleep(payload.ms / 1000)
    return {"ms": payload.ms}
