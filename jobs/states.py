"""The states a job can be in (the lifecycle is drawn in ``jobs.ledger``).

Kept apart from ``jobs.schema`` so that the CLI can offer them (``--state``)
without loading SQLAlchemy.
"""

from __future__ import annotations

__all__ = ["STATES", "TERMINAL_STATES"]

STATES = ("scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
