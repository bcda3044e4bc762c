"""``python -m tests.bench`` (``make bench``): bare Celery vs the platform on the same servers and settings.

Each round runs every phase for every system, alternating which system goes
first, so slow drift on a shared machine hits both. It prints a table of
medians (min-max) with each platform figure as a ratio to bare Celery of the
same round, and writes the same as JSON to ``bench-results/``. With ``--flow``,
flow control's phases (``tests.bench.flow``, platform only) run too, in a table
of their own against the platform's figures without a limit; with ``--workflows``,
workflows' phases (``tests.bench.workflows``), against plain jobs. Method and latest
numbers: ``docs/performance.md``.

It uses only the ``jobs_bench`` database and Redis db 12 (or what
``JOBS_DATABASE_URL`` / ``JOBS_BROKER_URL`` name, within the guards in
``tests.bench.servers``), and empties both when it ends.
"""

from __future__ import annotations

import os

from tests.bench.servers import BENCH_BROKER_URL, BENCH_DATABASE_URL, with_bench_kinds

# Before anything loads the platform's settings, which read the environment once.
os.environ.setdefault("JOBS_DATABASE_URL", BENCH_DATABASE_URL)
os.environ.setdefault("JOBS_BROKER_URL", BENCH_BROKER_URL)
os.environ["JOBS_KIND_MODULES"] = with_bench_kinds(os.environ.get("JOBS_KIND_MODULES", ""))

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.console import Console

from jobs import db
from jobs.producer import Producer
from jobs.settings import get_settings
from tests.bench import flow, flow_report, io, latency, phases, report, servers, workflows, workflows_report
from tests.bench.workers import SYSTEMS

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("single", "bulk", "bulk_cli", "drain", "latency")
FLOW_PHASES = ("drain_capped", "slot_latency")
WORKFLOW_PHASES = ("wf_submit", "wf_drain", "wf_latency")
EXTRA_PHASES = ("backlog", "drain_io", *FLOW_PHASES, *WORKFLOW_PHASES)
# Steps run in this order whatever --only says; a phase that is compared runs next to its baseline.
ORDER = (
    "single",
    "bulk",
    "bulk_cli",
    "drain",
    "drain_io",
    "drain_capped",
    "latency",
    "slot_latency",
    "wf_latency",
    "wf_submit",
    "wf_drain",
    "backlog",
)
PLATFORM_ONLY = ("bulk", "bulk_cli", "backlog", *FLOW_PHASES, *WORKFLOW_PHASES)
console = Console(stderr=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="jobs per drain (default: %(default)s)")
    parser.add_argument(
        "--single-n", type=int, default=2_000, help="single submissions (default: %(default)s)"
    )
    parser.add_argument(
        "--bulk-n", type=int, default=100_000, help="jobs per bulk submit (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork pool size (default: %(default)s)")
    parser.add_argument(
        "--latency-jobs", type=int, default=300, help="jobs per latency run (default: %(default)s)"
    )
    parser.add_argument(
        "--latency-rate", type=float, default=50.0, help="jobs/s in latency runs (default: %(default)s)"
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases among {','.join(ORDER)} (default: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--io",
        action="store_true",
        help="also run drain_io: jobs that each wait --io-ms on a threads pool, every system",
    )
    parser.add_argument("--io-n", type=int, default=2000, help="drain_io: jobs (default: %(default)s)")
    parser.add_argument(
        "--io-ms", type=float, default=20.0, help="drain_io: each job's wait, ms (default: %(default)s)"
    )
    parser.add_argument(
        "--io-concurrency", type=int, default=16, help="drain_io: threads per worker (default: %(default)s)"
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help=f"also run flow control's phases ({','.join(FLOW_PHASES)})",
    )
    parser.add_argument(
        "--slot-jobs", type=int, default=500, help="slot_latency: jobs per cap (default: %(default)s)"
    )
    parser.add_argument(
        "--slot-caps", default="1,2", help="slot_latency: the concurrency caps (default: %(default)s)"
    )
    parser.add_argument(
        "--slot-body-ms",
        type=float,
        default=5.0,
        help="slot_latency: each job's body sleeps this long (default: %(default)s)",
    )
    parser.add_argument(
        "--workflows",
        action="store_true",
        help=f"also run workflows' phases ({','.join(WORKFLOW_PHASES)})",
    )
    parser.add_argument(
        "--wf-submit-n",
        type=int,
        default=10_000,
        help="wf_submit: steps after the fan-out's root, before the fan-in's join (default: %(default)s)",
    )
    parser.add_argument(
        "--wf-n", type=int, default=5_000, help="wf_drain: jobs per shape (default: %(default)s)"
    )
    parser.add_argument(
        "--wf-shapes",
        default=",".join(workflows.SHAPES),
        help="wf_drain: plain jobs and workflow shapes drained (default: %(default)s)",
    )
    parser.add_argument(
        "--wf-width",
        type=int,
        default=100,
        help="wf_drain: chains side by side, steps per layer (default: %(default)s)",
    )
    parser.add_argument(
        "--wf-parents",
        type=int,
        default=4,
        help="wf_drain: parents of each step of a layer (default: %(default)s)",
    )
    parser.add_argument(
        "--wf-samples",
        type=int,
        default=200,
        help="wf_latency: two-step chains, then as many fan-ins (default: %(default)s)",
    )
    parser.add_argument(
        "--wf-fanin", type=int, default=4, help="wf_latency: parents of each fan-in (default: %(default)s)"
    )
    parser.add_argument(
        "--wf-rate",
        type=float,
        default=20.0,
        help="wf_latency: steps submitted per second, well below capacity (default: %(default)s)",
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="drain: more jobs queued behind the timed --n (default: 0)"
    )
    parser.add_argument(
        "--backlog-sizes",
        default="10000,100000",
        help="backlog phase: queued jobs in the ledger (default: %(default)s)",
    )
    parser.add_argument(
        "--backlog-probe",
        type=int,
        default=1000,
        help="backlog phase: jobs run per size (default: %(default)s)",
    )
    parser.add_argument(
        "--systems",
        default="celery-defaults,celery,platform,batched,pooled",
        help=f"comma-separated systems among {','.join(SYSTEMS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--with-db-backend",
        action="store_true",
        help="also drain with bare Celery + its database result backend (celery-db), for reference",
    )
    parser.add_argument(
        "--loglevel", default="INFO", help="worker log level, both systems (default: %(default)s)"
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        help="before each step, wait until the CPUs are less busy than this percent (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="wait at most this many seconds (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="where the JSON goes")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.io and "drain_io" not in args.only:
        args.only.append("drain_io")
    if args.flow:
        args.only += [phase for phase in FLOW_PHASES if phase not in args.only]
    if args.workflows:
        args.only += [phase for phase in WORKFLOW_PHASES if phase not in args.only]
    args.wf_shapes = [name.strip() for name in args.wf_shapes.split(",") if name.strip()]
    args.slot_caps = [int(cap) for cap in args.slot_caps.split(",") if cap.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.with_db_backend and "celery-db" not in args.systems:
        args.systems.append("celery-db")
    args.backlog_sizes = [int(size) for size in args.backlog_sizes.split(",") if size.strip()]
    for name, chosen, known in (
        ("phase", args.only, ORDER),
        ("system", args.systems, SYSTEMS),
        ("workflow shape", args.wf_shapes, workflows.SHAPES),
    ):
        unknown = set(chosen) - set(known)
        if unknown:
            parser.error(f"unknown {name}(s): {', '.join(sorted(unknown))}")
    args.only = sorted(dict.fromkeys(args.only), key=ORDER.index)
    return args


def await_quiet(below: float, wait: float) -> float:
    """Wait (at most ``wait`` seconds) until the machine's CPUs are less than ``below`` percent busy.

    Other people's processes share this machine; starting a step while they
    run makes both systems' figures noisy. Returns the last busy percentage seen.
    """
    deadline = time.monotonic() + wait
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= below and time.monotonic() < deadline:
        console.print(f"[yellow]machine {busy:.0f}% busy (others); waiting for < {below:g}%[/]")
        busy = psutil.cpu_percent(interval=2.0)
    return busy


def plan(args: argparse.Namespace, systems: list[str], number: int) -> list[tuple[str, str]]:
    """A round's steps, (phase, system), in order."""
    steps: list[tuple[str, str]] = []
    for phase in args.only:
        if phase in PLATFORM_ONLY:
            steps += [(phase, "platform")] if "platform" in systems else []
        elif phase == "drain":
            steps += [(phase, system) for system in systems]
        elif phase == "latency":
            steps += [(phase, system) for system in systems if system != "celery-db"]
        else:  # the batched workers share the platform's producer; they are for short jobs (no I/O phase)
            steps += [
                (phase, system) for system in systems if system not in ("celery-db", "batched", "pooled")
            ]
    if not number % 2 and ("drain_capped", "platform") in steps and ("drain", "platform") in steps:
        # Every other round the capped drain goes first, so drift does not favour either drain.
        steps.remove(("drain_capped", "platform"))
        steps.insert(steps.index(("drain", systems[0])), ("drain_capped", "platform"))
    return steps


def measure(
    bench: phases.Bench, args: argparse.Namespace, phase: str, system: str, number: int
) -> dict[str, Any]:
    """One step's figures (``number``: the round's)."""
    tag = f"round{number}"
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "single": lambda: phases.single(bench, system, args.single_n),
        "bulk": lambda: phases.bulk(bench, args.bulk_n),
        "bulk_cli": lambda: phases.bulk_cli(bench, args.bulk_n),
        "backlog": lambda: phases.backlog_ledger(bench, args.backlog_sizes, args.backlog_probe),
        "drain": lambda: phases.drain(bench, system, args.n, f"{tag}-drain", backlog=args.backlog),
        "drain_io": lambda: io.drain_io(
            bench, system, args.io_n, args.io_ms, args.io_concurrency, f"{tag}-drain-io"
        ),
        "drain_capped": lambda: flow.drain_capped(bench, args.n, f"{tag}-drain-capped"),
        "latency": lambda: latency.submit_to_start(
            bench, system, args.latency_jobs, args.latency_rate, f"{tag}-latency"
        ),
        "slot_latency": lambda: flow.slot_latency(
            bench, args.slot_caps, args.slot_jobs, args.slot_body_ms, f"{tag}-slot"
        ),
        "wf_submit": lambda: workflows.submit_times(bench, args.wf_submit_n),
        "wf_drain": lambda: workflows.drain_edges(
            bench,
            args.wf_shapes,
            args.wf_n,
            args.wf_width,
            args.wf_parents,
            number,
            f"{tag}-wf-drain",
            quiet=lambda: await_quiet(args.quiet_below, args.quiet_wait),
        ),
        "wf_latency": lambda: workflows.release_latency(
            bench, args.wf_samples, args.wf_fanin, args.wf_rate, f"{tag}-wf-latency"
        ),
    }
    return steps[phase]()


def run_round(bench: phases.Bench, args: argparse.Namespace, number: int) -> dict[str, Any]:
    systems = args.systems if number % 2 else list(reversed(args.systems))
    result: dict[str, Any] = {"round": number, "order": systems}
    for phase, system in plan(args, systems, number):
        busy = await_quiet(args.quiet_below, args.quiet_wait)
        started = time.monotonic()
        try:
            figures = measure(bench, args, phase, system, number)
        except phases.BenchError as error:
            console.print(f"[red]round {number} {phase} {system}: {error}[/]")
            figures = {"error": str(error)}
        figures["busy_before_pct"] = busy
        figures["load_average"] = round(os.getloadavg()[0], 2)
        result.setdefault(phase, {})[system] = figures
        shown = ", ".join(
            f"{key}={value:,.1f}" if isinstance(value, float) else f"{key}={value}"
            for key, value in figures.items()
            if not isinstance(value, dict)
        )
        console.print(f"round {number} {phase:<12} {system:<9} {time.monotonic() - started:6.1f}s  {shown}")
    return result


def code_version() -> str:
    """The commit measured (``-dirty`` with uncommitted changes to tracked files)."""
    marker = ROOT / ".bench-commit"
    if marker.exists():
        return marker.read_text(encoding="utf-8").split()[0]
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def _child_env() -> dict[str, str]:
    """The environment of the processes the benchmark starts (workers, ``jobs submit``).

    Some sandboxes set PYTHONDONTWRITEBYTECODE, which makes every start compile its
    imports again; an installed platform caches bytecode, so the children do too
    (outside the repository, as the tests' conftest does).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "jobs-bench-pycache"))
    return env


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so the workers the benchmark started are stopped too.
    signal.signal(signal.SIGTERM, _interrupted)
    settings = get_settings()
    servers.guard(settings)
    servers.prepare(settings)
    client = redis.Redis.from_url(settings.broker_url)
    machine = servers.describe(settings, client)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-{stamp}.json"
    bench = phases.Bench(
        settings=settings,
        client=client,
        producer=Producer(settings),
        env=_child_env(),
        log_dir=args.out / f"logs-{stamp}",
        concurrency=args.concurrency,
        loglevel=args.loglevel,
    )
    document: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "code": code_version(),
        "rounds": [],
    }
    console.print(
        f"benchmark: {machine['cpus']} CPUs, load {machine['load_average_at_start']}, writing {out}"
    )
    began = time.monotonic()
    try:
        bench.clear()
        for number in range(1, args.rounds + 1):
            document["rounds"].append(run_round(bench, args, number))
            document["summary"] = report.summarize(document["rounds"])
            document["flow_summary"] = report.summarize(document["rounds"], flow_report.FLOW_METRICS)
            document["workflows_summary"] = report.summarize(
                document["rounds"], workflows_report.WORKFLOW_METRICS
            )
            document["seconds"] = round(time.monotonic() - began, 1)
            out.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    finally:
        bench.clear()
        db.dispose()
    table_console = Console()
    if not table_console.is_terminal:
        table_console = Console(width=160)
    report.render(table_console, document["summary"], machine, args.rounds)
    report.render_backlog(table_console, document["rounds"])
    flow_report.render_flow(table_console, document.get("flow_summary", []), args.rounds)
    workflows_report.render_workflows(table_console, document.get("workflows_summary", []), args.rounds)
    console.print(f"{time.monotonic() - began:.0f}s; JSON: {out}; worker logs: {bench.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
