"""The states a job can be in (the lifecycle is drawn in ``jobs.ledger.lifecycle``).

``State`` is the type every state is spelled as; ``STATES`` lists them in
lifecycle order. Kept apart from ``jobs.schema`` so that the CLI can offer them
(``--state``) without loading SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

__all__ = ["ACTIVE_STATES", "STATES", "TERMINAL_STATES", "State", "workflow_state"]

State = Literal["scheduled", "held", "queued", "running", "retrying", "succeeded", "failed", "cancelled"]

STATES: tuple[State, ...] = get_args(State)
#: Jobs not finished yet.
ACTIVE_STATES: tuple[State, ...] = ("scheduled", "held", "queued", "running", "retrying")
#: Finished for good: a job in one of these never moves again.
TERMINAL_STATES: tuple[State, ...] = ("succeeded", "failed", "cancelled")

assert set(ACTIVE_STATES) | set(TERMINAL_STATES) == set(STATES)


def workflow_state(states: Iterable[str]) -> str:
    """A workflow's state, derived from its steps' states (docs/workflows.md): ``running`` while a
    step is not finished, else ``failed`` if one failed, else ``cancelled`` if one was cancelled,
    else ``succeeded``."""
    found = set(states)
    if found - set(TERMINAL_STATES):
        return "running"
    for state in ("failed", "cancelled"):
        if state in found:
            return state
    return "succeeded"
