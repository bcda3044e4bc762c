"""Workflows' measurements (``--workflows``; platform only): what a step's dependencies cost.

- ``wf_submit``: one ``submit_workflow`` of a fan-out (a root and ``--wf-submit-n`` steps after
  it) and of a fan-in (as many steps side by side and one after all of them), against one
  ``submit_many`` of as many plain ``ping`` jobs, in the same step, no worker. Building the
  ``Workflow`` in Python is timed apart. Then the fan-out's release: its root's finish as a
  worker records it (``workers.outcomes.record_success``: the finish, the count of its edges
  and the release of its children in one transaction, then their publish), in this process,
  right after the submit (no statistics taken: a worker would take the root at once).
- ``wf_drain``: the drain of ``tests.bench.phases`` (fill, start a worker, first message taken
  to last acknowledged) of the same number of ``ping`` jobs as plain jobs and as workflows of
  three shapes: a ``group`` (no edge: what being a step costs), ``chains`` (``--wf-width``
  chains side by side, one edge per step) and ``layers`` (layers ``--wf-width`` wide, each step
  after ``--wf-parents`` steps of the layer before). The difference in wall time and in CPU
  (worker and its PostgreSQL backends), divided by the edges, is the cost of an edge; the
  shapes run in a different order each round. Statistics are taken once the ledger is filled,
  as autovacuum would soon after a burst.
- ``wf_latency``: release latency: two-step chains, then fan-ins (``--wf-fanin`` parents and
  one child), submitted at a steady ``--wf-rate`` steps/s to a warm worker (a small share of
  what it can run: a faster trickle measures the queue, not the release); for each child,
  its ``started_at`` (the claim) minus the latest ``finished_at`` of its parents (the start of
  the transaction that recorded the last parent's success and released the child). It spans
  that transaction (the release included) and its commit, the publish, the worker taking the
  message and the claim: compared with the plain submit-to-start latency of the same round.

Every workflow drained is checked: each step succeeded once, each child started after each of
its parents finished, each edge was counted (``resolved``).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from jobs import db, ledger
from jobs.workflows import Workflow, submit_workflow
from tests.bench import phases
from tests.bench.latency import percentile
from tests.bench.phases import PAYLOAD, Bench, BenchError
from tests.bench.workers import Worker

__all__ = ["SHAPES", "Shape", "drain_edges", "release_latency", "shape", "submit_times"]

SHAPES = ("plain", "group", "chains", "layers")
KIND = "ping"
WARMUP = 50
STALL = 60.0


def fan_out(n: int) -> Workflow:
    """A root and ``n`` steps after it."""
    flow = Workflow("bench-fan-out")
    root = flow.step("root", KIND, PAYLOAD)
    for i in range(n):
        flow.step(f"s{i}", KIND, PAYLOAD, after=[root])
    return flow


def fan_in(n: int, name: str = "bench-fan-in") -> Workflow:
    """``n`` steps side by side and one after all of them."""
    flow = Workflow(name)
    parents = [flow.step(f"s{i}", KIND, PAYLOAD) for i in range(n)]
    flow.step("join", KIND, PAYLOAD, after=parents)
    return flow


@dataclass(frozen=True)
class Shape:
    """What a drain runs: ``steps`` jobs (as a workflow unless ``flow`` is ``None``), with
    ``edges`` dependencies, ``roots`` of them queued when the worker starts."""

    name: str
    steps: int
    edges: int
    roots: int
    flow: Workflow | None


def shape(name: str, n: int, width: int, parents: int) -> Shape:
    """``n`` steps (rounded down to a multiple of ``width``) in the shape named."""
    depth = n // width
    if depth < 2 or parents > width:
        raise BenchError(f"{n} steps in {width}-wide shapes with {parents} parents each: too few steps")
    steps = depth * width
    if name == "plain":
        return Shape(name, steps, 0, steps, None)
    flow = Workflow(f"bench-{name}")
    if name == "group":
        for i in range(steps):
            flow.step(f"s{i}", KIND, PAYLOAD)
        return Shape(name, steps, 0, steps, flow)
    if name == "chains":
        for chain in range(width):
            for i in range(depth):
                flow.step(f"c{chain}-{i}", KIND, PAYLOAD, after=[f"c{chain}-{i - 1}"] if i else [])
        return Shape(name, steps, width * (depth - 1), width, flow)
    if name == "layers":
        for layer in range(depth):
            for j in range(width):
                after = [f"l{layer - 1}-{(j + k) % width}" for k in range(parents)] if layer else []
                flow.step(f"l{layer}-{j}", KIND, PAYLOAD, after=after)
        return Shape(name, steps, parents * width * (depth - 1), width, flow)
    raise BenchError(f"unknown workflow shape {name!r} (one of {', '.join(SHAPES)})")


def submit_times(bench: Bench, n: int) -> dict[str, Any]:
    """``submit_many`` of ``n`` jobs, then ``submit_workflow`` of an ``n``-step fan-out and fan-in;
    then the fan-out root's finish, which releases its ``n`` children."""
    bench.clear()
    bench.producer.submit_many(KIND, [PAYLOAD] * WARMUP)
    submit_workflow(fan_out(WARMUP), producer=bench.producer)
    bench.clear()
    started = time.perf_counter()
    bench.producer.submit_many(KIND, [dict(PAYLOAD) for _ in range(n)])
    found: dict[str, Any] = {"n": n, "plain_seconds": time.perf_counter() - started}
    _check_submitted(bench, n, 0, n)
    for name, build, queued in (("fanout", fan_out, 1), ("fanin", fan_in, n)):
        bench.clear()
        started = time.perf_counter()
        flow = build(n)
        built = time.perf_counter()
        submitted = submit_workflow(flow, producer=bench.producer)
        done = time.perf_counter()
        _check_submitted(bench, n + 1, n, queued)
        found.update({f"{name}_build_seconds": built - started, f"{name}_seconds": done - built})
        if name == "fanout":
            found.update(_release_fan_out(bench, submitted.steps["root"], n))
    bench.clear()
    return found


def _check_submitted(bench: Bench, steps: int, edges: int, queued: int) -> None:
    with db.transaction(bench.settings) as conn:
        rows, deps = conn.execute(
            sa.text("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_deps)")
        ).one()
    waiting, _ = bench.depth()
    if (rows, deps, waiting) != (steps, edges, queued):
        raise BenchError(
            f"submitted {rows} jobs, {deps} edges, {waiting} messages; expected {steps}, {edges}, {queued}"
        )


def _release_fan_out(bench: Bench, root: uuid.UUID, n: int) -> dict[str, Any]:
    """The root's claim, then its success recorded as the worker records it; timed to the last
    child published."""
    from workers import outcomes

    with db.transaction(bench.settings) as conn:
        claimed = ledger.claim(conn, root, worker="bench@fan-out", lease=300)
    if claimed is None or not claimed.workflow:
        raise BenchError("the fan-out's root could not be claimed as a workflow step")
    started = time.perf_counter()
    if not outcomes.record_success(bench.settings, None, claimed, {"message": "pong"}):
        raise BenchError("the fan-out's root did not record its success")
    seconds = time.perf_counter() - started
    with db.transaction(bench.settings) as conn:
        queued = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE state = 'queued' AND published_at IS NOT NULL")
        ).scalar()
    waiting, _ = bench.depth()
    if queued != n or waiting != n + 1:  # the root's own message was never taken
        raise BenchError(f"the root's finish released {queued} of {n} children, {waiting - 1} published")
    return {"fanout_release_seconds": seconds}


def drain_edges(
    bench: Bench,
    shapes: list[str],
    n: int,
    width: int,
    parents: int,
    number: int,
    tag: str,
    quiet: Callable[[], float] = lambda: 0.0,
) -> dict[str, Any]:
    """Drain ``n`` jobs in each shape (in an order that turns with the round ``number``); each
    workflow shape's cost per edge against the plain jobs and against the group. ``quiet`` waits
    for a quiet machine before each drain, and returns how busy it still was (per cent)."""
    turn = (number - 1) % len(shapes)
    found: dict[str, Any] = {"n": n, "width": width, "parents": parents}
    for name in shapes[turn:] + shapes[:turn]:
        busy = quiet()
        figures = {**_drain(bench, shape(name, n, width, parents), tag), "busy_before_pct": busy}
        found.update({f"{name}_{key}": value for key, value in figures.items()})
    for name in shapes:
        edges = found.get(f"{name}_edges", 0)
        for base in ("plain", "group"):
            if not edges or base not in shapes or name == base:
                continue
            extra = found[f"{name}_seconds"] - found[f"{base}_seconds"]
            found[f"{name}_ms_per_edge_vs_{base}"] = extra * 1000 / edges
            cpu = found[f"{name}_cpu_ms_per_job"] - found[f"{base}_cpu_ms_per_job"]
            found[f"{name}_cpu_ms_per_edge_vs_{base}"] = cpu * found[f"{name}_steps"] / edges
    return found


def analyze(bench: Bench) -> None:
    """Take the ledger's statistics, as autovacuum would soon after a burst of submissions (the
    bench server runs without it)."""
    with db.transaction(bench.settings) as conn:
        conn.execute(sa.text("ANALYZE jobs, job_deps, workflows"))


def _drain(bench: Bench, drained: Shape, tag: str) -> dict[str, Any]:
    bench.clear()
    started = time.perf_counter()
    if drained.flow is None:
        bench.producer.submit_many(KIND, [dict(PAYLOAD) for _ in range(drained.steps)])
    else:
        submit_workflow(drained.flow, producer=bench.producer)
    fill_seconds = time.perf_counter() - started
    _check_submitted(bench, drained.steps, drained.edges, drained.roots)
    analyze(bench)
    worker = bench.worker("platform", f"{tag}-{drained.name}").start()
    try:
        first, last, cpu = phases.watch(bench, worker, drained.roots)
        db_cpu = phases.database_cpu(bench, worker)
    finally:
        worker.stop()
    figures = {
        "steps": drained.steps,
        "edges": drained.edges,
        "fill_seconds": fill_seconds,
        "seconds": last - first,
        "rate": drained.steps / (last - first),
        "worker_cpu_ms_per_job": cpu * 1000 / drained.steps,
        "database_cpu_ms_per_job": db_cpu * 1000 / drained.steps,
        "cpu_ms_per_job": (cpu + db_cpu) * 1000 / drained.steps,
        "ledger_rate": phases.ledger_check(bench, drained.steps)["ledger_rate"],
    }
    _check_order(bench, drained.edges)
    bench.clear()
    return figures


def _check_order(bench: Bench, edges: int) -> None:
    """Every edge counted once, as its parent's success, and every child started after each of
    its parents finished."""
    with db.transaction(bench.settings) as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*) AS edges,"
                " count(*) FILTER (WHERE d.resolved = 'succeeded') AS counted,"
                " count(*) FILTER (WHERE child.started_at <= parent.finished_at) AS early"
                " FROM job_deps d JOIN jobs child ON child.id = d.child_id"
                " JOIN jobs parent ON parent.id = d.parent_id"
            )
        ).one()
    if (row.edges, row.counted, row.early) != (edges, edges, 0):
        raise BenchError(
            f"edges: {row.edges} of {edges}, {row.counted} counted, {row.early} children started early"
        )


def release_latency(bench: Bench, samples: int, fanin: int, rate: float, tag: str) -> dict[str, Any]:
    """Two-step chains, then fan-ins of ``fanin`` parents, ``samples`` of each at ``rate`` jobs/s to
    a warm worker; from the last parent's finish to the child's start."""
    bench.clear()
    found: dict[str, Any] = {"samples": samples, "fanin": fanin, "rate": rate}
    worker = bench.worker("platform", tag).start()
    try:
        warm = [submit_workflow(fan_in(1, "bench-warm"), producer=bench.producer) for _ in range(4)]
        _await_done(bench, worker, warm)
        for name, parents in (("chain", 1), ("fanin", fanin)):
            pause = (parents + 1) / rate
            submitted = []
            begin = time.perf_counter()
            for i in range(samples):
                wait = begin + i * pause - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                submitted.append(submit_workflow(fan_in(parents, f"bench-{name}"), producer=bench.producer))
            _await_done(bench, worker, submitted)
            found.update({f"{name}_{key}": value for key, value in _gaps(bench, submitted).items()})
    finally:
        worker.stop()
    bench.clear()
    return found


def _await_done(bench: Bench, worker: Worker, flows: Sequence[uuid.UUID]) -> None:
    """Wait until every step of these workflows succeeded; a failure, a dead worker or a stall
    ends the run."""
    seen, last_change = -1, time.monotonic()
    while True:
        with db.transaction(bench.settings) as conn:
            done, failed, total = conn.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
                    " count(*) FILTER (WHERE state IN ('failed', 'cancelled')), count(*)"
                    " FROM jobs WHERE workflow_id = ANY(:w)"
                ),
                {"w": list(flows)},
            ).one()
        if failed:
            raise BenchError(f"{failed} workflow steps did not succeed; see {worker.log_path}")
        if done == total:
            return
        if done != seen:
            seen, last_change = done, time.monotonic()
        if not worker.alive():
            raise BenchError(f"the worker exited early; see {worker.log_path}")
        if time.monotonic() - last_change > STALL:
            raise BenchError(f"no progress for {STALL:g}s at {done} of {total} steps succeeded")
        time.sleep(phases.POLL * 5)


def _gaps(bench: Bench, flows: Sequence[uuid.UUID]) -> dict[str, Any]:
    """Per child: its start minus its last parent's finish (ms)."""
    with db.transaction(bench.settings) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT extract(epoch FROM child.started_at - max(parent.finished_at)) * 1000 AS gap"
                " FROM job_deps d JOIN jobs child ON child.id = d.child_id"
                " JOIN jobs parent ON parent.id = d.parent_id"
                " WHERE child.workflow_id = ANY(:w) GROUP BY child.id, child.started_at"
            ),
            {"w": list(flows)},
        ).scalars()
        gaps = sorted(float(gap) for gap in rows)
    if not gaps or len(gaps) != len(flows) or gaps[0] <= 0:
        raise BenchError(f"{len(gaps)} of {len(flows)} children timed, none may start before its parent")
    return {
        "p50_ms": percentile(gaps, 50),
        "p90_ms": percentile(gaps, 90),
        "p99_ms": percentile(gaps, 99),
        "max_ms": gaps[-1],
        "mean_ms": statistics.fmean(gaps),
    }
