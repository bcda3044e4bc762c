"""Options several commands share, declared once."""

from __future__ import annotations

import click

__all__ = ["worker_timeout"]

#: How long commands that ask the workers (Celery's inspect) wait for their answers.
worker_timeout = click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for workers to answer.",
)
