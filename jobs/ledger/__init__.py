"""The ledger's interface: every statement that changes a job or its attempt history.

Callers import the package (``from jobs import ledger``) and call intent-named
functions; nothing outside this package builds a statement against the
``jobs`` or ``job_attempts`` tables (``tests/unit/test_table_owners.py`` keeps it
so). The lifecycle those statements enforce is drawn once, in
``jobs.ledger.lifecycle``. One module per side of the job's life:

- ``intake``: new jobs (submitted, in bulk, adopted from a foreign message,
  recorded as refused) and the lookups a submission needs;
- ``collapsing``: submissions that collapse into a job already there (a kind's
  unique window, its debounce), under a lock on their content;
- ``publishing``: jobs taken to be put on the broker, and given back if it refused;
- ``admission``: jobs held by a limit, and their admission (flow control);
- ``dependencies``: workflows, their steps' edges, and a step's release when its parents
  have finished (docs/workflows.md);
- ``freeing``: what a job's end frees, in its transaction (both of the above);
- ``attempts``: claim, succeed, retry, fail, rescue, cancel, progress, and the
  worker's main process's leases and hand-backs;
- ``batches``: the batched worker's claim, finish and hand-back of several jobs at once;
- ``upkeep``: a job's state, and pruning finished jobs;
- ``statements``: what those statements share (the hot path's prepared
  execution, the attempt history's half of a transition).
"""

from __future__ import annotations

from jobs.ledger.admission import (
    admit,
    admit_jobs,
    admit_orphans,
    applies,
    cached_applies,
    forget_targets,
    free_slots,
    hold,
    hold_due,
    next_token,
    settle,
)
from jobs.ledger.attempts import (
    LOST_ERROR,
    Claimed,
    Finished,
    cancel,
    claim,
    end_leases_of,
    fail,
    hand_back,
    progress,
    release_lease,
    rescue_expired,
    retry,
    succeed,
)
from jobs.ledger.batches import claim_batch, renew, succeed_batch, unclaim, unclaim_lost
from jobs.ledger.collapsing import Pushed, lock_content, push_debounced, unique_holder
from jobs.ledger.dependencies import (
    CancelledStep,
    Edge,
    NewWorkflow,
    cancel_workflow,
    link,
    open_workflow,
    prune_workflows,
    release_ready,
    settle_dependents,
    workflow_for_slot,
)
from jobs.ledger.freeing import release
from jobs.ledger.intake import (
    NEW_JOB_COLUMNS,
    SERVER_NOW,
    KeyHolder,
    NewJob,
    adopt,
    copy_rows,
    holder_of_key,
    id_for_slot,
    insert_one,
    insert_rows,
    record_refused,
)
from jobs.ledger.lifecycle import ACTIVE_STATES, TRANSITIONS, sources
from jobs.ledger.publishing import Published, mark_unpublished, republish_stale, stage_due, take_unpublished
from jobs.ledger.statements import Executor
from jobs.ledger.upkeep import Status, prune, state_of, states_of, status_of

__all__ = [
    "ACTIVE_STATES",
    "LOST_ERROR",
    "NEW_JOB_COLUMNS",
    "SERVER_NOW",
    "TRANSITIONS",
    "CancelledStep",
    "Claimed",
    "Edge",
    "Executor",
    "Finished",
    "KeyHolder",
    "NewJob",
    "NewWorkflow",
    "Published",
    "Pushed",
    "Status",
    "admit",
    "admit_jobs",
    "admit_orphans",
    "adopt",
    "applies",
    "cached_applies",
    "cancel",
    "cancel_workflow",
    "claim",
    "claim_batch",
    "copy_rows",
    "end_leases_of",
    "fail",
    "forget_targets",
    "free_slots",
    "hand_back",
    "hold",
    "hold_due",
    "holder_of_key",
    "id_for_slot",
    "insert_one",
    "insert_rows",
    "link",
    "lock_content",
    "mark_unpublished",
    "next_token",
    "open_workflow",
    "progress",
    "prune",
    "prune_workflows",
    "push_debounced",
    "record_refused",
    "release",
    "release_lease",
    "release_ready",
    "renew",
    "republish_stale",
    "rescue_expired",
    "retry",
    "settle",
    "settle_dependents",
    "sources",
    "stage_due",
    "state_of",
    "states_of",
    "status_of",
    "succeed",
    "succeed_batch",
    "take_unpublished",
    "unclaim",
    "unclaim_lost",
    "unique_holder",
    "workflow_for_slot",
]
