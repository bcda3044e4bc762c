"""A workflow step's release, once its parents have all finished (docs/workflows.md).

Its ``inputs`` are resolved from its parents' results (``jobs.inputs``) and its payload is
validated against its kind's model where this process knows the kind (else where it runs, as
every payload is); then it is published (``held --release--> queued``), or, when its kind is
under a limit, it stays ``held`` and gets its limit slots (``jobs.ledger.admission``, admitted
now if there is room). If its inputs do not fit, it fails (``held --reject--> failed``) with the
field and the parent that supplied it named.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from jobs import inputs as step_inputs
from jobs import kinds
from jobs.counters import FINISHED, Tally
from jobs.errors import ErrorRecord, InvalidPayload
from jobs.ledger.admission import admit_jobs, hold
from jobs.ledger.lifecycle import sources
from jobs.ledger.publishing import Published
from jobs.ledger.statements import any_id, now
from jobs.schema import job_deps, jobs

__all__ = ["input_error", "release_steps"]

_PUBLISH_COLUMNS = (jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload)


def _ids(ids: Sequence[uuid.UUID]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid))


def _parents_of(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[step_inputs.Parent]]:
    parent = jobs.alias("parent")
    rows = conn.execute(
        sa.select(job_deps.c.child_id, parent.c.step, parent.c.state, parent.c.result)
        .join(parent, parent.c.id == job_deps.c.parent_id)
        .where(job_deps.c.child_id == sa.any_(_ids(ids)))
        .order_by(job_deps.c.child_id, job_deps.c.position)
    )
    found: dict[uuid.UUID, list[step_inputs.Parent]] = {}
    for row in rows:
        found.setdefault(row.child_id, []).append(step_inputs.Parent(row.step or "?", row.state, row.result))
    return found


@dataclass(slots=True)
class _Outcome:
    payloads: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    errors: dict[uuid.UUID, ErrorRecord] = field(default_factory=dict)


def _resolve(conn: sa.Connection, rows: Sequence[Any]) -> _Outcome:
    """The payloads of released steps with inputs: resolved, validated where the kind is known
    here (else where it runs); an error for each that does not fit."""
    outcome = _Outcome()
    parents = _parents_of(conn, [row.id for row in rows])
    for row in rows:
        payload = dict(row.payload)
        try:
            for name, value in step_inputs.resolve(row.inputs, parents.get(row.id, [])).items():
                step_inputs.set_field(payload, name, value)
            if row.kind in kinds.registry:
                payload = _validated(kinds.registry.get(row.kind), payload, row.inputs)
        except (step_inputs.UnresolvedInput, InvalidPayload) as error:
            outcome.errors[row.id] = {"type": "InvalidInput", "message": f"step {row.step!r}: {error}"}
            continue
        outcome.payloads[row.id] = payload
    return outcome


def _validated(kind: kinds.Kind, payload: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The payload as its kind's model dumps it; ``InvalidPayload`` naming the field and the
    parent that supplied it."""
    try:
        model = kind.payload.model_validate(payload)
    except pydantic.ValidationError as error:
        raise InvalidPayload(input_error(error, inputs)) from None
    return kind.dump(model)


def input_error(error: pydantic.ValidationError, inputs: dict[str, Any]) -> str:
    """A validation error of a step's resolved payload in one line: the field and, when an input
    supplied it, the reference it came from."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    where = ".".join(loc) or "payload"
    source = step_inputs.source_of(inputs, loc)
    origin = f" (from {source[1]})" if source is not None else ""
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"field {where!r}{origin}: {first['msg']}{more}"


def release_steps(
    conn: sa.Connection, ready: Sequence[uuid.UUID], tally: Tally | None
) -> tuple[list[Published], list[uuid.UUID]]:
    """Release held steps whose parents have all finished; returns the jobs to publish and the
    steps rejected (their inputs do not fit)."""
    rows = conn.execute(
        sa.select(
            jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.step, jobs.c.payload, jobs.c.inputs, jobs.c.limited
        )
        .where(any_id(ready), jobs.c.state == "held")
        .with_for_update()
    ).all()
    with_inputs = [row for row in rows if row.inputs]
    outcome = _resolve(conn, with_inputs) if with_inputs else _Outcome()
    rejected = _reject(conn, outcome.errors, tally) if outcome.errors else []
    if outcome.payloads:
        values = sa.values(sa.column("id", sa.Uuid), sa.column("payload", pg.JSONB), name="resolved").data(
            list(outcome.payloads.items())
        )
        conn.execute(sa.update(jobs).where(jobs.c.id == values.c.id).values(payload=values.c.payload))
    going = [row for row in rows if row.id not in outcome.errors]
    limited = [row.id for row in going if row.limited]
    free = [row.id for row in going if not row.limited]
    published: list[Published] = []
    if free:
        released = conn.execute(
            sa.update(jobs)
            .where(any_id(free), jobs.c.state.in_(sources("release")))
            .values(state="queued", published_at=now())
            .returning(*_PUBLISH_COLUMNS)
        ).all()
        published += [Published(*row) for row in released]
    if limited:  # under a limit: it waits held for its slots, admitted now if there is room
        published += admit_jobs(conn, limited, hold(conn, limited))
    return published, rejected


def _reject(
    conn: sa.Connection, errors: dict[uuid.UUID, ErrorRecord], tally: Tally | None
) -> list[uuid.UUID]:
    values = sa.values(sa.column("id", sa.Uuid), sa.column("error", pg.JSONB), name="why").data(
        list(errors.items())
    )
    rows = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == values.c.id, jobs.c.state.in_(sources("reject")))
        .values(state="failed", finished_at=now(), error=values.c.error)
        .returning(jobs.c.id, jobs.c.kind, jobs.c.queue)
    ).all()
    if tally is not None:
        for row in rows:
            tally.count(FINISHED, row.kind, row.queue, "failed")
    return [row.id for row in rows]
