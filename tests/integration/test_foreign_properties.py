"""Property: every message a worker consumes leaves a ledger row, whatever it carries.

Hypothesis builds foreign messages (plain Celery ``send_task`` messages that
never went through the producer): any kind name, any task id, and keyword
arguments of arbitrary JSON (NUL and surrogates in strings and keys, NaN,
integers past what ``json`` reads back). Each goes down the path a worker
takes: ``workers.runner.run`` for a kind this worker implements (adopt, or
refuse), ``workers.unknown.handle`` for one it does not (hand back, adopt to
wait, or refuse). Afterwards the ledger has a row under the message's job id
(its task id, or the id derived from a task id that is not a UUID), in a
state that says what happened, and a refused row keeps a storable copy.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from jobs import db, jsonsafe
from jobs.schema import jobs
from tests.integration.test_submit_properties import JSON, PROPERTY, TEXT
from workers import runner, unknown

pytestmark = pytest.mark.integration

KWARGS = st.dictionaries(TEXT, JSON, max_size=3)
KNOWN = st.sampled_from(["ping", "test.anything", "test.work"])
TASK_IDS = st.one_of(st.uuids().map(str), st.uuids().map(str), TEXT.filter(bool))


def row_of(settings: Any, job_id: uuid.UUID) -> dict[str, Any] | None:
    with db.transaction(settings) as conn:
        found = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    return None if found is None else dict(found._mapping)


def check_row(settings: Any, job_id: uuid.UUID) -> dict[str, Any]:
    row = row_of(settings, job_id)
    assert row is not None, "a consumed message left no row"
    assert jsonsafe.unstorable(row["payload"]) is None
    if row["state"] == "failed" and row["attempt"] == 0:  # refused: the reason is on the row
        assert row["error"]["message"]
    return row


@PROPERTY
@given(kind=KNOWN, task_id=TASK_IDS, kwargs=KWARGS)
def test_a_message_of_a_kind_this_worker_runs_leaves_a_row(clean, registry, kind, task_id, kwargs):
    job_id, bad_id = unknown.job_id_of(task_id)
    if bad_id is not None:  # what workers.task does with a task id that is not a UUID
        foreign = unknown.Foreign(job_id, kind, "default", 5, kwargs, bad_id)
        unknown.refuse(clean, foreign, unknown.bad_id_error(bad_id))
    else:
        delivery = runner.Delivery(job_id, kind, kwargs, "default", 5, "property@h")
        with contextlib.suppress(runner.AttemptFailed, runner.NotRun):  # failed, or a copy of a known job
            runner.run(clean, registry, delivery)
    row = check_row(clean, job_id)
    assert row["state"] in ("succeeded", "failed", "retrying")


@PROPERTY
@given(kind=TEXT.filter(bool), task_id=TASK_IDS, kwargs=KWARGS, queue=TEXT.filter(bool))
def test_a_message_of_a_kind_this_worker_lacks_leaves_a_row(clean, kind, task_id, kwargs, queue):
    message = unknown.parse(
        {"id": task_id, "task": kind}, {"routing_key": queue}, {}, [[], kwargs, {}], "default"
    )
    assert message is not None
    outcome = unknown.handle(clean, message)
    row = check_row(clean, message.job_id)
    # Nobody in this test's fleet ever implemented these kinds: every one is refused, never lost.
    assert (outcome.what, row["state"]) in {("failed", "failed"), ("stale", "failed")}
