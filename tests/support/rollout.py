"""A kind only some workers have: the new release in a rolling deploy (tests/acceptance/test_fleet.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

import jobs


class Greet(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str


@jobs.kind("rollout.greet", payload=Greet, max_attempts=3)
def greet(ctx: jobs.JobContext, payload: Greet) -> dict[str, str]:
    """Say hello: the body only the new workers have."""
    return {"greeting": f"hello {payload.name}", "attempt": str(ctx.attempt)}
