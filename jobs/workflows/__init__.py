"""Workflows in the ledger: steps that run after other steps, exactly once (docs/workflows.md).

``spec`` says what a workflow is (named steps, or ``chain``/``group``/``chord`` composed) and
checks it; ``submit`` writes it in one transaction; ``canvas`` compiles Celery's own canvas
(signatures, chains, groups, chords over job kinds) into one. The ledger's half (edges, the
release of a step when its parents finish) is ``jobs.ledger.dependencies``; what operators do
with a running workflow (status, list, cancel, retry) is ``jobs.workflow_control``.
"""

from __future__ import annotations

from jobs.workflows.canvas import from_canvas, submit_canvas
from jobs.workflows.files import from_spec, load
from jobs.workflows.spec import After, Chain, Group, Step, Workflow, chain, chord, group
from jobs.workflows.submit import WorkflowId, check_workflow, submit_workflow

__all__ = [
    "After",
    "Chain",
    "Group",
    "Step",
    "Workflow",
    "WorkflowId",
    "chain",
    "check_workflow",
    "chord",
    "from_canvas",
    "from_spec",
    "group",
    "load",
    "submit_canvas",
    "submit_workflow",
]
