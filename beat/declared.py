"""Schedules declared in code, synced into the ``schedules`` table when a beat starts leading.

Add a ``ScheduleSpec`` to ``SCHEDULES`` and deploy: the leader inserts it, or
updates its definition, and deletes declared schedules that are no longer
listed. Operators can pause, resume and trigger a declared schedule from the
CLI (a pause survives later syncs); ``jobs schedule edit`` and ``remove`` refuse
it and point here. An entry that fails validation (unknown kind, bad cron,
invalid payload) is logged by the leader and left out; ``tests/unit/test_schedules.py``
checks every entry, so such a mistake fails the tests first.

For example (the last one fires a workflow, given as a ``jobs.workflows.Workflow`` or as
its spec's data; its steps carry their own payloads, queues and priorities)::

    SCHEDULES: list[ScheduleSpec] = [
        ScheduleSpec("nightly-vacuum", "pg.vacuum_analyze", {"name": "public.orders"},
                     cron="30 2 * * *", timezone="Europe/Berlin", misfire="once", overlap="skip"),
        ScheduleSpec("heartbeat", "ping", every="5m", misfire="skip"),
        ScheduleSpec("nightly-etl", workflow=Workflow("etl", chain(Step("etl.extract"),
                     Step("etl.load", inputs={"rows": "^.rows"}))), cron="0 3 * * *", overlap="skip"),
    ]

The platform ships none: what to run, and when, is the installation's choice.
"""

from __future__ import annotations

from jobs.schedules import ScheduleSpec

__all__ = ["SCHEDULES"]

SCHEDULES: list[ScheduleSpec] = []
