"""Keep job payloads out of Celery's DEBUG log of every task it hands to the pool.

At DEBUG, Celery logs "TaskPool: Apply <fn> (args:... kwargs:...)" where the
arguments are the whole message: headers and body, so payload fields declared
secret would be printed in clear (only a 1,024-character cut stops that
today, by luck of the header's length). This filter keeps the line and drops
its arguments. Everything else Celery logs about a task shows ``kwargsrepr``,
which the producer fills with the masked payload.
"""

from __future__ import annotations

import logging

__all__ = ["WithholdPayloads", "install"]

POOL_LOGGER = "celery.pool"
_APPLY = "TaskPool: Apply"


class WithholdPayloads(logging.Filter):
    """Rewrites Celery's "TaskPool: Apply" debug record without the message it applies."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_APPLY):
            target = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = f"{_APPLY} %s (arguments withheld: they carry the job's payload)"
            record.args = (target,)
        return True


def install() -> None:
    """Attach the filter to Celery's pool logger (once per process)."""
    pool = logging.getLogger(POOL_LOGGER)
    if not any(isinstance(existing, WithholdPayloads) for existing in pool.filters):
        pool.addFilter(WithholdPayloads())
