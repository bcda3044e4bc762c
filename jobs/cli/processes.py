"""``jobs worker``, ``beat`` and ``flower``: the platform's processes (``jobs dev`` runs all three).

Each replaces itself with the Celery process (``exec``), so signals from a
terminal, systemd or Docker reach Celery directly.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from jobs.cli import context
from jobs.cli.completion import queue_lists
from jobs.cli.output import fail

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["beat", "flower", "worker"]

CELERY = [sys.executable, "-m", "celery"]


# bandit B606: the platform's own commands, never a shell or user input.
def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env if env is not None else dict(os.environ))  # nosec B606


def worker_queues(settings: Settings) -> list[str]:
    """Every queue a kind runs on, the default queue first, then Celery's own default queue."""
    queues = [settings.default_queue]
    for kind in context.registry():
        if kind.queue and kind.queue not in queues:
            queues.append(kind.queue)
    if settings.celery_queue and settings.celery_queue not in queues:
        queues.append(settings.celery_queue)
    return queues


#: Whether ``jobs worker -P prefork`` runs batches unless told ``--no-batches``.
BATCHES_BY_DEFAULT = False


def default_node_name() -> str:
    """A node name unique to this worker process: ``worker-PID-XXXX@HOST``.

    The pid tells processes on one host apart, the random part tells apart
    containers that share a host name and pid, and a restarted worker, so the
    roster and the ledger's ``worker`` column never mix two incarnations.
    """
    return f"worker-{os.getpid()}-{secrets.token_hex(2)}@%h"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "-Q", "--queues", help="Comma-separated queues (default: every kind's queue).", shell_complete=queue_lists
)
@click.option("-c", "--concurrency", type=click.IntRange(1), help="Pool size (default: CPU count).")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "batched"]),
    default="prefork",
    show_default=True,
    help=(
        "prefork for CPU-bound kinds, threads for I/O-bound ones, batched for queues of short jobs"
        " (-c single-process workers that claim and record their jobs in batches)."
    ),
)
@click.option(
    "-n",
    "--hostname",
    help=(
        "Node name, unique in the fleet (default: worker-PID-XXXX@HOST; %h is the host name;"
        " -P batched: NAME-I.XXXX@HOST for its process I)."
    ),
)
@click.option(
    "--batches/--no-batches",
    default=None,
    help=(
        "-P prefork: the pool processes claim, run and record the jobs in batches, one pipe"
        " message per batch (docs/performance.md)."
    ),
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str | None,
    concurrency: int | None,
    pool: str,
    hostname: str | None,
    batches: bool | None,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run a worker (Celery) that executes jobs. Extra arguments go to celery worker."""
    settings = context.settings()
    if batches and pool != "prefork":
        raise click.UsageError(f"--batches needs -P prefork (got -P {pool}); -P batched batches already.")
    if batches is None:
        batches = pool == "prefork" and BATCHES_BY_DEFAULT
    if pool == "batched":
        _batched(settings, queues, concurrency, hostname, loglevel, celery_args)
    argv = [*_celery_worker(loglevel, pool), "-Q", queues or ",".join(worker_queues(settings))]
    if concurrency:
        argv += ["-c", str(concurrency)]
    argv += ["-n", hostname or default_node_name()]
    env = dict(os.environ)
    env["JOBS_WORKER_BATCHED"] = "0"  # batching is -P batched's alone, whatever a .env file says
    env["JOBS_WORKER_POOL_BATCHES"] = "1" if batches else "0"
    if batches:
        # SIGTERM is Celery's warm shutdown, whatever the image sets: the buffer goes back and the
        # bodies running in the pool get the soft shutdown's window (workers.pool_batches).
        env["REMAP_SIGTERM"] = ""
    elif pool != "threads":
        # SIGTERM (docker stop, Kubernetes, systemd) starts Celery's soft shutdown: running jobs
        # get JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then are handed back to the broker.
        env.setdefault("REMAP_SIGTERM", "SIGQUIT")
    _exec([*argv, *celery_args], env)


def _celery_worker(loglevel: str, pool: str) -> list[str]:
    """The ``celery worker`` command line both kinds of ``jobs worker`` start from."""
    return [*CELERY, "-A", "workers", "worker", "-l", loglevel, "-P", pool]


def _batched(
    settings: Settings,
    queues: str | None,
    concurrency: int | None,
    hostname: str | None,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> NoReturn:
    """``-P batched``: this process becomes the supervisor of ``concurrency`` batched worker
    processes (``python -m jobs.batched_pool``, same pid: it holds none of this command's
    imports, only what supervising needs)."""
    from jobs import batched_pool

    solo = [*_celery_worker(loglevel, "solo"), "-c", "1", "-Q", queues or ",".join(worker_queues(settings))]
    plan = batched_pool.Plan(
        concurrency=concurrency or os.cpu_count() or 1,
        argv=[*solo, "-n", batched_pool.NODE, *celery_args],
        name=hostname,
        soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        log_format=settings.log_format,
        loglevel=loglevel,
    )
    env = dict(os.environ)
    env["JOBS_WORKER_BATCHED"] = "1"
    env["JOBS_WORKER_POOL_BATCHES"] = "0"
    env.setdefault("REMAP_SIGTERM", "SIGQUIT")  # SIGTERM: the running body gets the soft shutdown window
    env[batched_pool.PLAN] = plan.to_json()
    _exec([sys.executable, "-m", "jobs.batched_pool"], env)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run the leader: staging, relaying and rescuing jobs (one leads; start several safely)."""
    context.settings()
    _exec([*CELERY, "-A", "beat", "beat", "-l", loglevel, *celery_args])


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_command(
    settings: Settings, *, no_auth: bool, state_file: str, max_tasks: int
) -> tuple[list[str], dict[str, str]]:
    """The Flower command line and environment (credentials go through the environment, not argv)."""
    env = dict(os.environ)
    has_credentials = bool(settings.flower_user and settings.flower_password)
    if no_auth:
        if not _loopback(settings.flower_address):
            fail(f"--no-auth is only allowed on a loopback address, not {settings.flower_address}", 2)
    elif not has_credentials:
        fail(
            "Flower needs JOBS_FLOWER_USER and JOBS_FLOWER_PASSWORD (or --no-auth when bound to 127.0.0.1)", 2
        )
    else:
        assert settings.flower_password is not None
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    argv = [
        *CELERY,
        "-A",
        "workers",
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        "--persistent=True",
        f"--db={state_file}",
        f"--max_tasks={max_tasks}",
        "--purge_offline_workers=3600",
    ]
    return argv, env


@click.command()
@click.option("--no-auth", is_flag=True, help="Run without authentication (loopback address only).")
@click.option("--state-file", default="flower.db", show_default=True, help="Where Flower keeps its state.")
@click.option(
    "--max-tasks",
    type=click.IntRange(100),
    default=10_000,
    show_default=True,
    help="Tasks Flower keeps in memory.",
)
def flower(no_auth: bool, state_file: str, max_tasks: int) -> None:
    """Run Flower (live view of workers and jobs), with basic auth from JOBS_FLOWER_*."""
    settings = context.settings()
    argv, env = flower_command(settings, no_auth=no_auth, state_file=state_file, max_tasks=max_tasks)
    _ask_for_task_events(settings)
    _exec(argv, env)


def _ask_for_task_events(settings: Settings) -> None:
    """Ask running workers for task events now; Flower asks again every 5 s, the first time only
    5 s after it starts (workers in ``auto`` mode send them while asked: workers.events)."""
    import contextlib

    from jobs.app import create_app

    with contextlib.suppress(Exception):  # Redis down: Flower asks again once it is up
        app = create_app(settings)
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=max(1, round(settings.publish_timeout)))
            app.control.enable_events(connection=conn)
