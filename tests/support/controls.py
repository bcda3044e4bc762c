"""Remote-control commands for the fault tests, registered in the worker that loads the test kinds.

``tests.support.kinds`` imports this module, so every worker started with
``JOBS_KIND_MODULES=tests.support.kinds`` answers these commands; production
workers never load it.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

__all__ = ["WEDGE_COMMAND", "wedge_consumer"]

WEDGE_COMMAND = "test_wedge_consumer"


@control_command(name=WEDGE_COMMAND)
def wedge_consumer(state: Any, **_: Any) -> dict[str, str]:
    """Leave the worker's consumer connected and answering, but taking no more messages.

    This is the end state of kombu's reconnect bug (celery/celery#8030, kombu#2629):
    the transport believes it may not consume, so it never sends another BRPOP. A
    new connection (a new channel) ends it, as it ends the real thing.
    """
    channel = state.consumer.task_consumer.channel
    channel.qos.can_consume = lambda: False
    return {"ok": "consumer wedged"}
