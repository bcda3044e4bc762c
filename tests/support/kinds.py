"""Job kinds for the tests: each exercises one behaviour of the platform.

Loaded through ``JOBS_KIND_MODULES=tests.support.kinds`` by the test process
and by the worker subprocesses of the acceptance tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, SecretStr

import jobs
from jobs.backoff import Backoff
from jobs.limits import Debounce, Unique
from tests.support import controls as _controls  # noqa: F401 - registers the tests' control commands

FAST = Backoff(base=0.2, factor=1.0, maximum=0.2, jitter=0.0)

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS test_effects (
    key text NOT NULL,
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
)
"""


class Nothing(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Effect(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    sleep: float = 0.0
    fail_after_write: bool = False


class Flaky(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    succeed_on: int = 2


class Sleep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    seconds: float = 1.0
    steps: int = 4


class Anything(BaseModel):
    """Any JSON value (``value``), and a float that may be NaN or infinite (``number``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: Any = None
    number: float | None = None


class Secret(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    user: str
    token: SecretStr


@jobs.kind("test.fail", payload=Nothing, max_attempts=3, backoff=FAST)
def always_fail(ctx: jobs.JobContext, payload: Nothing) -> None:
    """Raise every time."""
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@jobs.kind("test.flaky", payload=Flaky, max_attempts=5, backoff=FAST)
def flaky(ctx: jobs.JobContext, payload: Flaky) -> dict[str, int]:
    """Fail until attempt ``succeed_on``."""
    if ctx.attempt < payload.succeed_on:
        raise ConnectionError(f"not yet (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}


@jobs.kind("test.effect", payload=Effect, max_attempts=3, backoff=FAST)
def effect(ctx: jobs.JobContext, payload: Effect) -> dict[str, Any]:
    """Record an effect row in the job's own transaction."""
    ctx.session.execute(
        sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
        {"k": payload.key, "j": ctx.job_id, "a": ctx.attempt},
    )
    deadline = time.monotonic() + payload.sleep
    while time.monotonic() < deadline:
        if ctx.cancelled():
            return {"cancelled": True}
        time.sleep(0.05)
    if payload.fail_after_write:
        raise jobs.Fail("failed after writing; the write must roll back")
    return {"key": payload.key}


@jobs.kind("test.sleep", payload=Sleep, max_attempts=1, soft_time_limit=3.0, hard_time_limit=5.0)
def sleep(ctx: jobs.JobContext, payload: Sleep) -> dict[str, float]:
    """Sleep in steps, reporting progress."""
    for step in range(payload.steps):
        ctx.progress(step, payload.steps, f"step {step + 1}")
        time.sleep(payload.seconds / payload.steps)
    ctx.progress(payload.steps, payload.steps, "done")
    return {"slept": payload.seconds}


@jobs.kind("test.hang", payload=Sleep, max_attempts=1, soft_time_limit=1.0, hard_time_limit=2.0)
def hang(ctx: jobs.JobContext, payload: Sleep) -> None:
    """Ignore the soft limit (swallow it) so the hard limit must kill the child."""
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(BaseException):  # deliberately swallows the soft limit
            time.sleep(0.1)


@jobs.kind("test.anything", payload=Anything, max_attempts=1)
def anything(ctx: jobs.JobContext, payload: Anything) -> dict[str, Any]:
    """Accept any JSON payload (the property tests throw arbitrary values at submit)."""
    return {"number": payload.number}


@jobs.kind("test.secret", payload=Secret, max_attempts=1)
def secret(ctx: jobs.JobContext, payload: Secret) -> dict[str, Any]:
    """Use a secret: the body sees it, nobody else does."""
    return {"user": payload.user, "token_length": len(payload.token.get_secret_value())}


@jobs.kind("test.crash", payload=Nothing, max_attempts=2, backoff=FAST)
def crash(ctx: jobs.JobContext, payload: Nothing) -> None:
    """Kill the pool process running it, every time."""
    os.kill(os.getpid(), signal.SIGKILL)


class Work(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    sleep: float = 0.0
    crash_on_attempt: int = 0


class Leak(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    megabytes: int = 100


def _work(ctx: jobs.JobContext, payload: Work) -> dict[str, Any]:
    """Write an effect row in the job's transaction, say which process runs it, then take its time."""
    ctx.progress(0, 1, f"pid {os.getpid()}")
    ctx.session.execute(
        sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
        {"k": payload.key, "j": ctx.job_id, "a": ctx.attempt},
    )
    if ctx.attempt == payload.crash_on_attempt:
        ctx.session.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # the write reached PostgreSQL, the commit never does
    deadline = time.monotonic() + payload.sleep
    while time.monotonic() < deadline:
        if ctx.cancelled():
            return {"cancelled": True}
        time.sleep(0.05)
    return {"key": payload.key, "pid": os.getpid()}


@jobs.kind("test.work", payload=Work, max_attempts=3, backoff=FAST)
def work(ctx: jobs.JobContext, payload: Work) -> dict[str, Any]:
    """The fault tests' workload: one effect per success, optionally crashing its process midway."""
    return _work(ctx, payload)


@jobs.kind(
    "test.long", payload=Work, max_attempts=3, backoff=FAST, soft_time_limit=25.0, hard_time_limit=30.0
)
def long(ctx: jobs.JobContext, payload: Work) -> dict[str, Any]:
    """Like ``test.work``, with limits that let it outlive a short visibility timeout."""
    return _work(ctx, payload)


_LEAKED: list[bytearray] = []


@jobs.kind("test.leak", payload=Leak, max_attempts=1)
def leak(ctx: jobs.JobContext, payload: Leak) -> dict[str, int]:
    """Keep ``megabytes`` of memory for good, as a leaking library would; returns the process id."""
    _LEAKED.append(bytearray(b"\x01") * (payload.megabytes * 1024 * 1024))
    return {"pid": os.getpid(), "leaked_mb": payload.megabytes * len(_LEAKED)}


class Hold(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    release: str = ""
    seconds: float = 120.0


@jobs.kind("test.hold", payload=Hold, max_attempts=1, soft_time_limit=150.0, hard_time_limit=160.0)
def hold(ctx: jobs.JobContext, payload: Hold) -> dict[str, Any]:
    """Write an effect row, then run until cancelled, released or ``seconds`` pass.

    Released: once a ``test_effects`` row keyed ``release`` exists. A test looks at (or
    sends a duplicate of) a running job while it runs, however slow the machine is.
    """
    ctx.session.execute(
        sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
        {"k": payload.key, "j": ctx.job_id, "a": ctx.attempt},
    )
    released = sa.text("SELECT EXISTS (SELECT 1 FROM test_effects WHERE key = :k)")
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        if ctx.cancelled():
            return {"cancelled": True}
        if payload.release and ctx.session.execute(released, {"k": payload.release}).scalar():
            break
        time.sleep(0.05)
    return {"key": payload.key}


class Gate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    seconds: float = 60.0


@jobs.kind(
    "test.gate", payload=Gate, max_attempts=3, backoff=FAST, soft_time_limit=45.0, hard_time_limit=50.0
)
def gate(ctx: jobs.JobContext, payload: Gate) -> dict[str, Any]:
    """Touch ``PATH.started``, then wait (no database work) until the file ``PATH`` exists.

    A test holds a batched worker's batch open with it: the bodies before it in the batch
    have run and their successes wait for the batch's finish. Its soft time limit (45 s, below
    the suite's visibility timeout with the lease margin) outlasts what a test does meanwhile
    on a slow host; the suite's default (20 s) stopped it under a CI run's busy test.
    """
    Path(f"{payload.path}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline and not Path(payload.path).exists():
        time.sleep(0.02)
    return {"gate": payload.path, "attempt": ctx.attempt}


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str
    seconds: float = 0.0
    n: int = 0


@jobs.kind("test.tenant", payload=Tenant, max_attempts=2, backoff=FAST)
def tenant(ctx: jobs.JobContext, payload: Tenant) -> dict[str, Any]:
    """Flow control's workload: record a start (``test_effects`` keyed by tenant) and sleep.
    Tests put limits on it at runtime (``jobs limits set`` or ``jobs.limit_store``)."""
    with ctx.session.begin():
        ctx.session.execute(
            sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
            {"k": payload.tenant, "j": ctx.job_id, "a": ctx.attempt},
        )
    time.sleep(payload.seconds)
    return {"tenant": payload.tenant, "n": payload.n}


class Note(BaseModel):
    """A tenant's piece of work: the unique and debounce kinds tell jobs apart by ``tenant`` alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str
    note: str = ""


#: The unique window of ``test.unique``, in seconds (the tests move ``created_at`` across it).
UNIQUE_PERIOD = 60.0
#: The quiet period of ``test.debounce``, in seconds (long: the tests move ``not_before`` instead).
DEBOUNCE_PERIOD = 30.0


def _tenant(ctx: jobs.JobContext, payload: Note) -> dict[str, str]:
    return {"tenant": payload.tenant, "note": payload.note}


jobs.declare(
    "test.unique",
    payload=Note,
    max_attempts=1,
    unique=Unique(fields=("tenant",), period=UNIQUE_PERIOD),
    body=_tenant,
    description="One job per tenant per minute.",
)
jobs.declare(
    "test.unique_unfinished",
    payload=Note,
    max_attempts=1,
    unique=Unique(fields=("tenant",)),
    body=_tenant,
    description="At most one unfinished job per tenant.",
)
jobs.declare(
    "test.debounce",
    payload=Note,
    max_attempts=1,
    debounce=Debounce(period=DEBOUNCE_PERIOD, fields=("tenant",)),
    body=_tenant,
    description="Runs once a tenant's submissions have been quiet for 30 seconds.",
)


class StepWork(BaseModel):
    """A workflow step's work: record an effect under ``key`` (in the job's transaction, so a
    step that ran to success twice shows twice), wait ``sleep`` seconds, fail when ``fail`` (or
    while ``test_effects`` has no row keyed ``fail_until``: a cause the test fixes before it
    retries the workflow), and return ``value`` with the step's job id."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: Any = None
    key: str | None = None
    sleep: float = 0.0
    fail: bool = False
    fail_until: str | None = None


@jobs.kind("test.step", payload=StepWork, max_attempts=3, backoff=FAST)
def step(ctx: jobs.JobContext, payload: StepWork) -> dict[str, Any]:
    """A workflow's step for the tests (docs/workflows.md)."""
    if payload.key is not None:
        ctx.session.execute(
            sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
            {"k": payload.key, "j": ctx.job_id, "a": ctx.attempt},
        )
    deadline = time.monotonic() + payload.sleep
    while time.monotonic() < deadline:
        if ctx.cancelled():
            return {"cancelled": True}
        time.sleep(0.02)
    if payload.fail:
        raise jobs.Fail("this step fails on purpose")
    if payload.fail_until is not None:
        fixed = ctx.session.execute(
            sa.text("SELECT count(*) FROM test_effects WHERE key = :k"), {"k": payload.fail_until}
        ).scalar_one()
        if not fixed:
            raise jobs.Fail(f"{payload.fail_until!r} is not fixed yet")
    return {"value": payload.value, "job": str(ctx.job_id)}


class Numbers(BaseModel):
    """A fan-in's input: numbers from the parents, summed (``total`` must be a whole number)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    numbers: list[int]
    key: str | None = None


@jobs.kind("test.sum", payload=Numbers, max_attempts=3, backoff=FAST)
def total(ctx: jobs.JobContext, payload: Numbers) -> dict[str, Any]:
    """Sum the numbers its parents gave (a workflow's fan-in for the tests)."""
    if payload.key is not None:
        ctx.session.execute(
            sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
            {"k": payload.key, "j": ctx.job_id, "a": ctx.attempt},
        )
    return {"value": sum(payload.numbers), "count": len(payload.numbers)}
