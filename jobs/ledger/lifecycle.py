"""The job lifecycle: the states, the transitions between them, drawn once.

Every job lives in exactly one of these states; the three on the right are
terminal and never left::

                 ┌──────────────────────── cancel ─────────────────────────┐
                 │                                                          ▼
  submit ─► scheduled ──stage──► queued ──claim──► running ──succeed──► succeeded
  (delayed)      │                ▲  ▲   (a worker)  │  ▲ │
                 │     admit/release stage           │  │ ├──fail────────► failed
                 │                │  │   retry/rescue│  │ │  (no attempts left,
                 │ stage          │  │               ▼  │ │   not retryable)
                 │ (limited)      │  └──────── retrying │
                 ▼                │  stage (limited) │  claim (lease expired)
  submit ─────► held ─────────────┘◄─────────────────┘  └──cancel──────► cancelled
  (limited, or   │
  a workflow     └──reject (a step's inputs do not fit its kind)──────────► failed
  step)

A job under a limit (docs/flow-control.md) waits ``held`` in the ledger, never on the broker,
until every limit it is under admits it (``jobs.ledger.admission``); a workflow's step
(docs/workflows.md) waits ``held`` until its parents have finished (``jobs.ledger.dependencies``:
released, or rejected when its parents' results do not fit its kind, or cancelled when a parent
it needs failed). ``held`` jobs can be cancelled too.

The transitions, one per line (``from --event--> to``); the unit tests check
``TRANSITIONS`` against this list and against ``docs/architecture.md``::

    scheduled --stage--> queued        the leader publishes a delayed job when due
    retrying --stage--> queued         the leader publishes a retry when its backoff ends
    scheduled --stage--> held          a due delayed job under a limit waits for admission
    retrying --stage--> held           a due retry under a limit waits for admission
    held --admit--> queued             every limit of the job has room: published
    held --release--> queued           a workflow step's last parent finished: published
    held --reject--> failed            the step's inputs from its parents do not fit its kind
    queued --claim--> running          a worker takes the job: attempt + 1, lease taken
    running --claim--> running         a redelivery takes a job whose lease expired
    running --unclaim--> queued        a batch's job whose body never started is handed back
    running --succeed--> succeeded     the body returned; result stored
    running --retry--> retrying        the body raised a retryable error, attempts left
    running --fail--> failed           not retryable, or the last attempt failed
    running --rescue--> retrying       the lease expired (worker lost), attempts left
    running --rescue--> failed         the lease expired on the last attempt
    scheduled --cancel--> cancelled    an operator cancelled it
    held --cancel--> cancelled         an operator cancelled it
    queued --cancel--> cancelled       an operator cancelled it
    retrying --cancel--> cancelled     an operator cancelled it
    running --cancel--> cancelled      an operator cancelled it; the worker stops it

Replaying a ``failed`` or ``cancelled`` job (``jobs retry``) never leaves the
terminal state: it submits a new job whose ``retry_of`` names the old one.

Every transition is one statement of this package: an UPDATE whose WHERE
clause names the states the event may start from (``sources``), so two actors
racing for the same job cannot both win.
"""

from __future__ import annotations

from jobs.states import ACTIVE_STATES, TERMINAL_STATES, State

__all__ = ["ACTIVE_STATES", "TRANSITIONS", "sources", "targets"]

TRANSITIONS: frozenset[tuple[State, str, State]] = frozenset(
    {
        ("scheduled", "stage", "queued"),
        ("retrying", "stage", "queued"),
        ("scheduled", "stage", "held"),
        ("retrying", "stage", "held"),
        ("held", "admit", "queued"),
        ("held", "release", "queued"),
        ("held", "reject", "failed"),
        ("queued", "claim", "running"),
        ("running", "claim", "running"),
        ("running", "unclaim", "queued"),
        ("running", "succeed", "succeeded"),
        ("running", "retry", "retrying"),
        ("running", "fail", "failed"),
        ("running", "rescue", "retrying"),
        ("running", "rescue", "failed"),
        ("scheduled", "cancel", "cancelled"),
        ("held", "cancel", "cancelled"),
        ("queued", "cancel", "cancelled"),
        ("retrying", "cancel", "cancelled"),
        ("running", "cancel", "cancelled"),
    }
)


def sources(event: str) -> tuple[State, ...]:
    """The states an event may start from, per ``TRANSITIONS``."""
    found = sorted({source for source, name, _ in TRANSITIONS if name == event})
    if not found:
        raise KeyError(event)
    return tuple(found)


def targets(event: str) -> set[State]:
    return {target for _, name, target in TRANSITIONS if name == event}


assert not {t for _, _, t in TRANSITIONS} - set(ACTIVE_STATES) - set(TERMINAL_STATES)
