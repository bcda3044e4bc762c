"""Celery's canvas compiled into a ledger workflow (docs/workflows.md, "Celery canvas").

Teams keep their canvas code; ``submit_canvas`` turns it into a workflow of the ledger, with its
guarantees (a fan-in that fires exactly once, failure that cancels what needed it, one cancel
for the whole workflow) instead of Redis counters and ``chord_unlock`` polling::

    from celery import chain, chord, group, signature
    import jobs.workflows

    flow = chain(
        signature("reports.extract", kwargs={"day": "2026-11-30"}),
        chord([signature("reports.shard", kwargs={"n": n}) for n in range(8)],
              signature("reports.merge").set(inputs={"parts": "*"})),
    )
    workflow_id = jobs.workflows.submit_canvas(flow, name="nightly")

How each piece maps:

- a signature of a job kind is a step: its ``task`` is the kind, its ``kwargs`` the payload;
  ``queue``, ``priority`` and ``max_attempts`` options are the step's; ``.set(step=NAME)``
  names it; ``.set(inputs={...})`` takes payload fields from its parents' results
  (``jobs.inputs``: ``"^"`` is the previous step's result, ``"*"`` the list of a chord's);
- ``chain(a, b)`` runs ``b`` after ``a``; ``group(a, b)`` runs them side by side; ``chord(h, b)``
  runs ``b`` after every step of ``h``; nested freely (a chain inside a chord's header included);
- a signature's ``link`` callbacks run after it (as ``chain`` does).

A result is passed only where ``inputs`` says so (a job kind takes a typed payload, not
positional arguments), so ``.s()`` and ``.si()`` compile alike. Refused with ``InvalidWorkflow``,
naming the signature: positional ``args``, ``countdown``/``eta``/``expires``, ``link_error``
(a step with ``when="finished"`` runs after a failure instead), ``chunks``/``xmap``/``xstarmap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs.errors import InvalidWorkflow
from jobs.workflows.spec import Chain, Group, Node, Step, Workflow
from jobs.workflows.submit import WorkflowId, submit_workflow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.producer import Producer

__all__ = ["from_canvas", "submit_canvas"]

_STEP_OPTIONS = ("queue", "priority", "max_attempts")
_REFUSED_OPTIONS = {
    "countdown": "a step runs when its parents finish: delays are not supported",
    "eta": "a step runs when its parents finish: delays are not supported",
    "expires": "steps do not expire; cancel the workflow instead",
    "link_error": "use a step with when='finished' after it to run on failure",
}


def from_canvas(canvas: Any, *, name: str | None = None) -> Workflow:
    """A workflow from a Celery canvas (a signature, chain, group or chord, or their dict form);
    ``name`` defaults to the first step's kind."""
    from celery.canvas import Signature, maybe_signature

    if isinstance(canvas, Mapping) and not isinstance(canvas, Signature):
        canvas = maybe_signature(dict(canvas))
    if not isinstance(canvas, Signature):
        raise InvalidWorkflow(f"not a Celery signature, chain, group or chord: {canvas!r}")
    node = _node(canvas)
    return Workflow(name or _first_kind(node), node)


def submit_canvas(
    canvas: Any,
    *,
    name: str | None = None,
    producer: Producer | None = None,
    session: Session | None = None,
    submitted_by: str | None = None,
    schedule_name: str | None = None,
    schedule_slot: datetime | None = None,
) -> WorkflowId:
    """Compile a Celery canvas (``from_canvas``) and submit it as one workflow."""
    return submit_workflow(
        from_canvas(canvas, name=name),
        producer=producer,
        session=session,
        submitted_by=submitted_by,
        schedule_name=schedule_name,
        schedule_slot=schedule_slot,
    )


def _first_kind(node: Node) -> str:
    while not isinstance(node, Step):
        node = node.nodes[0]
    return node.kind


def _node(sig: Any) -> Node:
    from celery.canvas import Signature, _chain, chord, group, maybe_signature

    sig = maybe_signature(sig) if not isinstance(sig, Signature) else sig
    if isinstance(sig, chord):
        header = [_node(task) for task in sig.tasks]
        node: Node = Chain([Group(header), _node(sig.body)])
    elif isinstance(sig, _chain):
        node = Chain([_node(task) for task in sig.tasks])
    elif isinstance(sig, group):
        node = Group([_node(task) for task in sig.tasks])
    elif type(sig) is Signature:
        node = _step(sig)
    else:
        raise InvalidWorkflow(
            f"{sig.get('subtask_type') or type(sig).__name__} is not supported in a workflow "
            "(signatures, chain, group and chord are)"
        )
    links = [_node(link) for link in sig.options.get("link") or ()]
    if links:
        node = Chain([node, Group(links) if len(links) > 1 else links[0]])
    return node


def _step(sig: Any) -> Step:
    label = f"signature {sig.task!r}"
    if sig.args:
        raise InvalidWorkflow(
            f"{label}: a job kind takes its payload as keyword arguments (kwargs), not positional args"
        )
    for option, advice in _REFUSED_OPTIONS.items():
        if sig.options.get(option) is not None:
            raise InvalidWorkflow(f"{label}: option {option!r} is not supported in a workflow; {advice}")
    options = {key: sig.options.get(key) for key in _STEP_OPTIONS}
    inputs = sig.options.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        raise InvalidWorkflow(f"{label}: option 'inputs' maps payload fields to references like '^' or '*'")
    when = sig.options.get("when", "succeeded")
    return Step(
        kind=sig.task,
        payload=dict(sig.kwargs or {}),
        name=sig.options.get("step"),
        inputs=dict(inputs),
        when=when,
        queue=options["queue"],
        priority=options["priority"],
        max_attempts=options["max_attempts"],
    )
