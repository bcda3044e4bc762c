"""Why a job is not running, and what to do about it (``jobs explain ID``).

``gather`` collects the facts (the job's row from the ledger, paused queues,
the leader, the workers that answer, how many jobs wait ahead, the limits a
held job waits for, the workflow a step belongs to and its parents); ``reasons``
is a pure function of those facts, so every case is tested without servers.
The first reason is the one that matters; later ones are also true.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs import db, fleet, limit_usage, observe, parentage, pauses
from jobs.errors import BrokerUnavailable, JobNotFound
from jobs.leader import current_leader
from jobs.parentage import StepOf
from jobs.schema import TERMINAL_STATES, jobs
from jobs.settings import Settings

__all__ = ["Facts", "Reason", "gather", "reasons"]

#: Parents named in a waiting step's reason; the rest are counted.
PARENTS_NAMED = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """Everything ``reasons`` looks at, read at one moment."""

    now: datetime
    job: dict[str, Any]
    paused: bool
    leader: str | None
    consumers: list[str] | None
    """Workers consuming the job's queue; None when the workers could not be asked."""
    live_workers: list[str] | None
    ahead: int
    implementers: list[str] | None = None
    """Live workers on the job's queue that implement its kind; None when the roster is unknown."""
    implemented_elsewhere: list[str] = dataclasses.field(default_factory=list)
    """Live workers that implement the kind on other queues."""
    limits: list[limit_usage.Wait] = dataclasses.field(default_factory=list)
    """A held job's limits: each with how full the job's key is now."""
    step: StepOf | None = None
    """The workflow the job is a step of; None for a job on its own."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """One cause, in words, with what an operator can do."""

    code: str
    message: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _when(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    local = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if seconds >= 0:
        return f"{local} (in {observe.span(seconds)})"
    return f"{local} ({observe.span(-seconds)} ago)"


def _no_leader() -> Reason:
    return Reason(
        "no_leader",
        "no beat process leads, so delayed, retrying and unpublished jobs are not being published",
        "start the leader: `jobs beat` (check it with `jobs health beat`)",
    )


def _finished(job: dict[str, Any], step: StepOf | None = None) -> list[Reason]:
    state = job["state"]
    detail = ""
    if state != "succeeded" and job.get("error"):
        message = (str(job["error"].get("message") or "").strip().splitlines() or [""])[0]
        detail = f": {job['error'].get('type')}: {message}"
    elif state == "succeeded":
        detail = " (result in `jobs status`)"
    action = "nothing to do"
    if state != "succeeded":
        action = "nothing runs it again; `jobs retry ID` submits a new job with the same payload"
        if step is not None and step.replaced_by is not None:
            action = "nothing runs this job again: the job that replaced it is the step now"
        elif step is not None:
            action = (
                f"`jobs workflow retry {step.workflow_id}` runs it again with the steps after it, "
                "once the workflow has finished (steps that succeeded keep their results)"
            )
    found = [
        Reason(
            "finished",
            f"already finished: {state} after {job['attempt']} of {job['max_attempts']} attempts{detail}",
            action,
        )
    ]
    if step is not None and step.replaced_by is not None:
        found.insert(
            0,
            Reason(
                "replaced",
                f"a retry of workflow {step.workflow!r} replaced this job: step {step.step!r} is now "
                f"job {step.replaced_by}",
                f"explain that one: `jobs explain {step.replaced_by}`",
            ),
        )
    return found


def _parents(facts: Facts, step: StepOf) -> list[Reason]:
    """A held step waits for its parents: which, and in what state each is now."""
    waiting = step.waiting()
    named = ", ".join(f"{parent.step} ({parent.state})" for parent in waiting[:PARENTS_NAMED])
    more = f" and {len(waiting) - PARENTS_NAMED} more" if len(waiting) > PARENTS_NAMED else ""
    found = [
        Reason(
            "parents",
            f"waits for {len(waiting)} of its {len(step.parents)} parent step(s): {named}{more}",
            "it is released (queued) in the transaction that records the end of the last of them; "
            f"`jobs workflow status {step.workflow_id}` draws the workflow",
        )
    ]
    if waiting and all(parent.state in TERMINAL_STATES for parent in waiting):
        found.append(
            Reason(
                "settling",
                "its parents have finished but their ends are not counted yet: the leader counts "
                "them within a tick",
                "wait a second; if it stays held, check the leader (`jobs health beat`) and its log",
            )
        )
        if facts.leader is None:
            found.append(_no_leader())
    return found


def _running(facts: Facts) -> list[Reason]:
    job, now = facts.job, facts.now
    worker = job.get("worker") or "an unknown worker"
    lease = job.get("lease_until")
    expired = lease is not None and lease < now
    gone = facts.live_workers is not None and job.get("worker") not in facts.live_workers
    if expired or gone:
        when = f"its lease expired {_when(lease, now)}" if expired and lease else "it does not answer"
        if lease and not expired:
            when += f"; its lease runs until {_when(lease, now)}"
        found = [
            Reason(
                "worker_lost",
                f"claimed by {worker}, which stopped heartbeating ({when})",
                "the leader's rescuer retries it (or fails it on its last attempt) once the lease "
                "expires; restart the worker if it is stuck",
            )
        ]
        if facts.leader is None:
            found.append(_no_leader())
        return found
    started = job.get("started_at")
    since = f" since {_when(started, now)}" if started else ""
    progress = job.get("progress") or {}
    done = f", progress {progress.get('done')}/{progress.get('total')}" if progress else ""
    return [
        Reason(
            "running",
            f"running now on {worker}{since} (attempt {job['attempt']} of {job['max_attempts']}{done})",
            "wait for it: `jobs wait ID`; stop it: `jobs cancel ID`",
        )
    ]


def _waiting(facts: Facts) -> list[Reason]:
    job = facts.job
    queue = job["queue"]
    found: list[Reason] = []
    if facts.paused:
        found.append(
            Reason(
                "paused",
                f"queue {queue!r} is paused: workers take no new jobs from it",
                f"resume it: `jobs queue resume {queue}`",
            )
        )
    if facts.consumers is not None and not facts.consumers and not facts.paused:
        found.append(
            Reason(
                "no_consumer",
                f"no worker consumes queue {queue!r}",
                f"start one: `jobs worker -Q {queue}` (see `jobs workers`)",
            )
        )
    if facts.implementers is not None and not facts.implementers and facts.consumers != []:
        elsewhere = facts.implemented_elsewhere
        found.append(
            Reason(
                "no_implementer",
                f"no live worker implements kind {job['kind']!r}"
                + (
                    f" on queue {queue!r} (it runs on {', '.join(elsewhere)}, which consume other queues)"
                    if elsewhere
                    else ""
                ),
                "the job waits in the ledger (no attempt is spent) until a worker that implements the kind"
                f" consumes queue {queue!r}: deploy one (JOBS_KIND_MODULES), or `jobs cancel ID`",
            )
        )
    if job.get("published_at") is None and facts.leader is None:
        found.append(_no_leader())
    if facts.ahead:
        found.append(
            Reason(
                "waiting",
                f"waiting behind {facts.ahead} job(s) in queue {queue!r}",
                "wait, or add workers for the queue (`jobs worker -Q " + queue + "`)",
            )
        )
    elif not found:
        found.append(
            Reason(
                "next",
                f"next in line on queue {queue!r}; every worker slot is busy or it is being delivered",
                "wait; `jobs workers` shows what the workers run",
            )
        )
    return found


def _seconds(seconds: float) -> str:
    """Short waits to a tenth of a second (a rate limit's pace), longer ones as ``observe.span``."""
    return f"{seconds:.1f}s" if seconds < 10 else observe.span(seconds)


def _holding(wait: limit_usage.Wait, now: datetime) -> Reason | None:
    """Why one limit does not admit the job now, or None when it would (or already did)."""
    limit = wait.limit
    if wait.admitted_at is not None:
        return None
    where = f"limit {limit.name}" + (f" (queue {limit.queue})" if limit.queue else "")
    where += f", key {limit.key}={wait.key}" if limit.key else ""
    ahead = f"; {wait.ahead} waiting ahead of it" if wait.ahead else ""
    if limit.concurrency is not None:
        if wait.running + wait.ahead < limit.concurrency:
            return None
        started = wait.oldest_started_at
        oldest = f" (oldest started {observe.span((now - started).total_seconds())} ago)" if started else ""
        return Reason(
            "limit",
            f"waiting for {where}: {wait.running}/{limit.concurrency} running{oldest}{ahead}",
            f"it starts as those finish; to raise the cap: `jobs limits set {limit.name} --concurrency N`",
        )
    interval = limit.interval or 0.0
    due = wait.tat - timedelta(seconds=limit.burst * interval) if wait.tat else None
    left = max(0.0, (due - now).total_seconds()) if due else 0.0
    if left <= 0 and not wait.ahead:
        return None
    pace = f"next start in {_seconds(left)}" if left > 0 else "next start now"
    turn = f" (its turn in about {_seconds(left + wait.ahead * interval)})" if wait.ahead else ""
    return Reason(
        "limit",
        f"waiting for {where}: {limit.describe()}, {pace}{ahead}{turn}",
        f"it starts at the limit's pace; to change it: `jobs limits set {limit.name} --rate N/PERIOD`",
    )


def _held(facts: Facts) -> list[Reason]:
    """A held job waits in the ledger for its parents (a workflow's step), or for its limits
    (``jobs limits``): one line per limit that does not admit it now."""
    if facts.step is not None and facts.job.get("pending"):
        return _parents(facts, facts.step)
    found = [reason for wait in facts.limits if (reason := _holding(wait, facts.now)) is not None]
    if not found:
        why = "every limit it waits for has room" if facts.limits else "no limit holds it any more"
        found.append(
            Reason(
                "admitting",
                f"held, but {why}: it is being admitted (the leader releases it within a tick)",
                "wait a second; if it stays held, check the leader (`jobs health beat`) and its log",
            )
        )
    if facts.leader is None:
        found.append(
            Reason(
                "no_leader",
                "no beat process leads, so held jobs are admitted only when a job of their limits is "
                "submitted or finishes (a rate limit's next start waits for the leader)",
                "start the leader: `jobs beat` (check it with `jobs health beat`)",
            )
        )
    return found


def reasons(facts: Facts) -> list[Reason]:
    """Why the job is where it is, the most useful reason first."""
    job, now = facts.job, facts.now
    state = job["state"]
    if state in TERMINAL_STATES:
        return _finished(job, facts.step)
    by_state = {"running": _running, "held": _held}.get(state)
    if by_state is not None:
        return by_state(facts)
    if state in ("scheduled", "retrying"):
        not_before = job.get("not_before")
        if not_before is not None and not_before > now:
            if state == "scheduled":
                what = "delayed"
                action = "wait; to run it sooner cancel it and submit again without --delay"
            else:
                what = (
                    f"waiting out its retry backoff after attempt {job['attempt']} of {job['max_attempts']}"
                )
                action = "wait: the leader publishes it then; `jobs cancel ID` stops it for good"
            found = [Reason("not_due", f"not due until {_when(not_before, now)} ({what})", action)]
            if facts.leader is None:
                found.append(_no_leader())
            return found
        if facts.leader is None:
            return [_no_leader()]
        return [
            Reason(
                "staging",
                f"due since {_when(not_before, now) if not_before else 'now'}; the leader "
                f"({facts.leader}) publishes it on its next tick",
                "wait a second; if it stays, check the leader's log",
            )
        ]
    return _waiting(facts)


def gather(settings: Settings, job_id: uuid.UUID, *, timeout: float = 1.0) -> Facts:
    """Read the facts about one job now (the ledger, then the workers)."""
    with db.transaction(settings) as conn:
        row = conn.execute(sa.select(jobs, sa.func.now().label("db_now")).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job with id {job_id}")
        job = {key: value for key, value in row._mapping.items() if key != "db_now"}
        is_paused = job["queue"] in pauses.paused(conn)
        leader = current_leader(conn)
        ahead = observe.ahead_of(conn, job_id) if job["state"] == "queued" else 0
        waits = limit_usage.waits_of(conn, job_id) if job["state"] == "held" else []
        step = parentage.step_of(conn, job)
    consumers: list[str] | None = None
    live: list[str] | None = None
    implementers: list[str] | None = None
    elsewhere: list[str] = []
    if job["state"] in ("queued", "running"):
        try:
            found = fleet.workers(settings, timeout=timeout)
        except BrokerUnavailable:
            pass  # said as "could not ask the workers" by the caller
        else:
            live = sorted(fleet.live_nodes(found))
            consumers = fleet.consumers(found).get(job["queue"], [])
            if any(worker.state == "alive" for worker in found):  # the roster knows the kinds
                implementers = fleet.implementers(found, job["kind"], job["queue"])
                elsewhere = fleet.implementers(found, job["kind"])
    return Facts(
        now=row.db_now,
        job=job,
        paused=is_paused,
        leader=leader,
        consumers=consumers,
        live_workers=live,
        ahead=ahead,
        implementers=implementers,
        implemented_elsewhere=elsewhere,
        limits=waits,
        step=step,
    )
