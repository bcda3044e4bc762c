"""``python -m tests.bench.cli`` (``make bench-cli``): how long the ``jobs`` command takes, as a user runs it.

Each command runs as a subprocess of the installed ``jobs`` script, with a
warm bytecode cache (one untimed run first), once per round for ``--runs``
rounds (so a burst of other people's load hits every command alike); the table shows
the median and min-max wall clock of the whole process, start-up included, and
its median CPU time (user + system), which other people's load disturbs less.
Targets and latest numbers: ``docs/performance.md`` ("Command start-up").

It uses only the ``jobs_bench`` database and Redis db 12, or what
``JOBS_DATABASE_URL`` / ``JOBS_BROKER_URL`` name: a database whose name ends in
``_bench`` or ``_test`` and a Redis db other than 0. It empties both (jobs and
messages) before and after, as the tests do.
"""

from __future__ import annotations

import os

from tests.bench.servers import BENCH_BROKER_URL, BENCH_DATABASE_URL

# Before anything loads the platform's settings, which read the environment once.
os.environ.setdefault("JOBS_DATABASE_URL", BENCH_DATABASE_URL)
os.environ.setdefault("JOBS_BROKER_URL", BENCH_BROKER_URL)

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from jobs.settings import Settings, get_settings
from tests.bench import servers

ROOT = Path(__file__).resolve().parents[2]
console = Console(stderr=True)


@dataclass(frozen=True)
class Case:
    """One command line to time, the exit codes that count as a normal run, and the target in seconds."""

    name: str
    argv: tuple[str, ...]
    target: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    exit_codes: tuple[int, ...] = (0,)


def cases(job_id: str) -> list[Case]:
    complete = (("_JOBS_COMPLETE", "bash_complete"), ("COMP_WORDS", "jobs submit "), ("COMP_CWORD", "2"))
    return [
        Case("help", ("--help",), target=0.3),
        Case("complete", (), target=0.3, env=complete),
        # Queue names read the ledger too (psycopg, one connection, three small queries).
        Case(
            "complete_queue",
            (),
            env=(*complete[:1], ("COMP_WORDS", "jobs list --queue "), ("COMP_CWORD", "3")),
        ),
        Case("status", ("status", job_id), target=0.7),
        Case("list", ("list",), target=0.7),
        Case("submit", ("submit", "ping"), target=0.7),
        Case("kinds", ("kinds",)),
        # Without workers and Flower doctor reports failures (exit 1); it waits --timeout for workers.
        Case("doctor", ("doctor",), exit_codes=(0, 1)),
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=10, help="rounds, each runs every command once (default: %(default)s)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated among help,complete,complete_queue,status,list,submit,kinds,doctor",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=50.0,
        help="before each round, wait until the CPUs are less than this %% busy (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="wait at most this many seconds (default: %(default)s)"
    )
    return parser.parse_args(argv)


def environment() -> dict[str, str]:
    """The environment a user's shell gives the command: bytecode is cached (some sandboxes turn that off)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def jobs_script() -> str:
    """The installed console script next to this interpreter (what a user runs), else the one on PATH."""
    beside = Path(sys.executable).with_name("jobs")
    found = str(beside) if beside.exists() else shutil.which("jobs")
    if found is None:
        sys.exit("the jobs command is not installed (run `make install`)")
    return found


def run(
    script: str, case: Case, env: dict[str, str]
) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Wall clock and CPU time (user + system) of one run of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [script, *case.argv], env={**env, **dict(case.env)}, capture_output=True, timeout=60, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done


def await_quiet(below: float, wait: float) -> float:
    """Wait (at most ``wait`` seconds) until the machine's CPUs are less than ``below`` percent busy."""
    deadline = time.monotonic() + wait
    busy = psutil.cpu_percent(interval=0.5)
    while busy >= below and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def checked(script: str, case: Case, env: dict[str, str]) -> tuple[float, float]:
    seconds, cpu, done = run(script, case, env)
    if done.returncode not in case.exit_codes:
        sys.exit(f"jobs {' '.join(case.argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return seconds, cpu


def time_cases(
    script: str, chosen: list[Case], env: dict[str, str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every command once per round, so that a burst of other people's load hits all of them alike."""
    for case in chosen:
        checked(script, case, env)  # writes the bytecode cache, as any earlier use would have
    times: dict[str, list[float]] = {case.name: [] for case in chosen}
    cpus: dict[str, list[float]] = {case.name: [] for case in chosen}
    busy = []
    for number in range(1, args.runs + 1):
        busy.append(await_quiet(args.quiet_below, args.quiet_wait))
        console.print(f"round {number}/{args.runs} (machine {busy[-1]:.0f}% busy before it)")
        for case in chosen:
            seconds, cpu = checked(script, case, env)
            times[case.name].append(seconds)
            cpus[case.name].append(cpu)
    return [
        {
            "command": case.name,
            "argv": list(case.argv),
            "median": statistics.median(times[case.name]),
            "min": min(times[case.name]),
            "max": max(times[case.name]),
            "cpu_median": statistics.median(cpus[case.name]),
            "target": case.target,
            "times": times[case.name],
            "cpu_times": cpus[case.name],
            "busy_percent_before_rounds": busy,
        }
        for case in chosen
    ]


def render(results: list[dict[str, Any]]) -> Table:
    table = Table(title="jobs command: wall clock and CPU time (s), warm bytecode cache")
    for column in ("command", "median", "min-max", "CPU", "target", "met"):
        table.add_column(column, justify="left" if column == "command" else "right")
    labels = {
        "help": "jobs --help",
        "complete": "jobs submit <TAB>",
        "complete_queue": "jobs list --queue <TAB>",
        "status": "jobs status ID",
    }
    for result in results:
        target = result["target"]
        label = labels.get(result["command"], "jobs " + " ".join(result["argv"]))
        table.add_row(
            label,
            f"{result['median']:.2f}",
            f"{result['min']:.2f}-{result['max']:.2f}",
            f"{result['cpu_median']:.2f}",
            f"≤ {target:g}" if target else "",
            ("yes" if result["median"] <= target else "no") if target else "",
        )
    return table


def guard(settings: Settings) -> None:
    """Refuse any database but a ``*_bench`` or ``*_test`` one, and Redis db 0."""
    name = sa.make_url(settings.database_url).database or ""
    if not name.endswith(("_bench", "_test")):
        sys.exit(f"the benchmark refuses database {name!r}: its name must end in _bench or _test")
    client = redis.Redis.from_url(settings.broker_url)
    if int(client.connection_pool.connection_kwargs.get("db", 0)) == 0:
        sys.exit("the benchmark never uses Redis db 0: set JOBS_BROKER_URL to another db")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    settings = get_settings()
    guard(settings)
    servers.prepare(settings)
    client = redis.Redis.from_url(settings.broker_url)
    servers.clear(settings, client)
    script, env = jobs_script(), environment()
    try:
        submitted = subprocess.run(
            [script, "submit", "ping", "--json"], env=env, capture_output=True, check=True, timeout=60
        )
        job_id = json.loads(submitted.stdout)["id"]
        chosen = cases(job_id)
        if args.only:
            wanted = set(args.only.split(","))
            unknown = wanted - {case.name for case in chosen}
            if unknown:
                sys.exit(f"unknown command(s): {', '.join(sorted(unknown))}")
            chosen = [case for case in chosen if case.name in wanted]
        results = time_cases(script, chosen, env, args)
    finally:
        servers.clear(settings, client)
    Console().print(render(results))
    out = ROOT / "bench-results" / f"cli-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": sys.version.split()[0]}
    out.write_text(json.dumps({"machine": machine, "runs": args.runs, "results": results}, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
