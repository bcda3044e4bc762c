"""``jobs worker``, ``beat``, ``flower`` and ``dev``: the platform's processes.

Each of the first three replaces itself with the Celery process (``exec``),
so signals from a terminal, systemd or Docker reach Celery directly.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal

# bandit B404/B603/B606: these start the platform's own commands, never a shell or user input.
import subprocess  # nosec B404
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import click

from jobs.cli import context
from jobs.cli.completion import queue_lists
from jobs.cli.output import fail
from jobs.errors import LedgerUnavailable

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["beat", "dev", "flower", "worker"]

CELERY = [sys.executable, "-m", "celery"]


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env if env is not None else dict(os.environ))  # nosec B606


def worker_queues(settings: Settings) -> list[str]:
    """Every queue a kind runs on, the default queue first."""
    queues = [settings.default_queue]
    for declared in context.registry():
        if declared.queue and declared.queue not in queues:
            queues.append(declared.queue)
    return queues


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "-Q", "--queues", help="Comma-separated queues (default: every kind's queue).", shell_complete=queue_lists
)
@click.option("-c", "--concurrency", type=click.IntRange(1), help="Pool size (default: CPU count).")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork for CPU-bound kinds, threads for I/O-bound ones.",
)
@click.option("-n", "--hostname", help="Node name (default: celery@HOST).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str | None,
    concurrency: int | None,
    pool: str,
    hostname: str | None,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run a worker (Celery) that executes jobs. Extra arguments go to celery worker."""
    settings = context.settings()
    argv = [
        *CELERY,
        "-A",
        "workers",
        "worker",
        "-l",
        loglevel,
        "-P",
        pool,
        "-Q",
        queues or ",".join(worker_queues(settings)),
    ]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    env = dict(os.environ)
    if pool != "threads":
        # SIGTERM (docker stop, Kubernetes, systemd) starts Celery's soft shutdown: running jobs
        # get JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then are handed back to the broker.
        env.setdefault("REMAP_SIGTERM", "SIGQUIT")
    _exec([*argv, *celery_args], env)


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
    argv, env = flower_command(
        context.settings(), no_auth=no_auth, state_file=state_file, max_tasks=max_tasks
    )
    _exec(argv, env)


POSTGRES_HINT = "docker run -d -p 127.0.0.1:5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16"
REDIS_HINT = "docker run -d -p 127.0.0.1:6379:6379 redis:7"


def _check_servers(settings: Settings) -> None:
    import redis

    from jobs import migrate

    try:
        migrate.create_database(settings)
    except LedgerUnavailable as error:
        fail(f"{error.message}; start one, for example: {POSTGRES_HINT}", 3)
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError) as error:
        fail(
            f"Redis is unreachable at {_safe_redis(settings.broker_url)} ({_first_line(error)}); "
            f"start one, for example: {REDIS_HINT}",
            3,
        )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _safe_redis(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


@click.command()
@click.option("--concurrency", type=click.IntRange(1), default=2, show_default=True)
def dev(concurrency: int) -> None:
    """Run the whole platform in the foreground: migrations, a worker, beat and Flower; Ctrl-C stops all."""
    from jobs import migrate
    from jobs.cli.output import err

    settings = context.settings()
    _check_servers(settings)
    migrate.upgrade(settings)
    err.print(f"ledger schema at {migrate.current(settings)}")
    env = dict(os.environ)
    user = settings.flower_user or "admin"
    password = (
        settings.flower_password.get_secret_value() if settings.flower_password else secrets.token_urlsafe(12)
    )
    env.update(JOBS_FLOWER_USER=user, JOBS_FLOWER_PASSWORD=password)
    jobs_cmd = [sys.executable, "-m", "jobs"]
    children = {
        "worker": _spawn([*jobs_cmd, "worker", "-c", str(concurrency)], env),
        "beat": _spawn([*jobs_cmd, "beat"], env),
        "flower": _spawn([*jobs_cmd, "flower", "--state-file", ".flower-dev.db"], env),
    }
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        job = context.producer().submit("ping", {"message": "hello from jobs dev"}, submitted_by="jobs dev")
        err.print(f"submitted a ping job: {job}")
        state = _await(
            settings, job, lambda: stopping or any(p.poll() is not None for p in children.values())
        )
        err.print(f"job {job} {state}; see it with: jobs status {job}")
        url = f"http://{settings.flower_address}:{settings.flower_port}"
        err.print(f"Flower: {url}  (user {user}, password {password})")
        err.print(
            "the platform is running; submit jobs from another terminal (jobs submit ping); Ctrl-C stops it"
        )
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    err.print(f"[red]{name} exited with code {child.returncode}; stopping[/]")
                    stopping = True
            time.sleep(0.2)
    finally:
        _stop_all(children)
    sys.exit(0 if all(c.returncode in (0, -signal.SIGTERM) for c in children.values()) else 1)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env)  # nosec B603


def _await(settings: Settings, job: uuid.UUID, give_up: Callable[[], bool]) -> str:
    from jobs import inspect

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not give_up():
        row = inspect.states_of(settings, [job]).get(job)
        if row and row["state"] in ("succeeded", "failed", "cancelled"):
            return str(row["state"])
        time.sleep(0.3)
    return "not finished yet"


def _stop_all(children: dict[str, subprocess.Popen[bytes]], grace: float = 40.0) -> None:
    from jobs.cli.output import err

    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            err.print(f"{name} did not stop in {grace:g}s; killing it")
            child.kill()
            child.wait()
    err.print("stopped worker, beat and Flower")
