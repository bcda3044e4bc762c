"""``jobs dev``: the whole platform in the foreground, for development.

It migrates the ledger, starts a worker, beat and Flower (each in its own
process group, see ``jobs.cli.supervisor``), submits a ``ping`` job and prints
how to look at it. Ctrl-C once: the worker finishes its running jobs (Celery's
warm shutdown), beat releases the leader lock, Flower saves its state, and
``jobs dev`` exits when they are done. Ctrl-C again: the worker hands its
running jobs back to the queue at once (Celery's cold shutdown). A third time
kills what is left.

Flower's development credentials are made once and kept in
``.flower-dev-credentials`` (git-ignored) in the working directory, so the
browser does not ask again on every start; delete the file for new ones.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobs.cli import context, output
from jobs.cli.output import fail, first_line
from jobs.cli.supervisor import Step, Supervisor
from jobs.errors import JobsError, LedgerUnavailable

# Imported where used: completing a command line loads neither SQLAlchemy nor rich.
if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["CREDENTIALS_FILE", "STATE_FILE", "dev", "flower_login", "jobs_command"]

#: Flower's state, and the credentials ``jobs dev`` made for it, in the working directory.
STATE_FILE = ".flower-dev.db"
CREDENTIALS_FILE = ".flower-dev-credentials"

#: Beat and Flower stop in a second or two; past this, they are killed.
SIDE_GRACE = 15.0
#: How long the first ping job may take before ``jobs dev`` stops waiting for it.
PING_TIMEOUT = 120.0

POSTGRES_HINT = "docker run -d -p 127.0.0.1:5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16"
REDIS_HINT = "docker run -d -p 127.0.0.1:6379:6379 redis:7"


@dataclasses.dataclass(frozen=True, slots=True)
class Login:
    """Flower's basic-auth credentials, and where they come from."""

    user: str
    password: str
    source: str


def flower_login(settings: Settings, path: Path) -> Login:
    """JOBS_FLOWER_USER/PASSWORD when set; else the ones saved in ``path``; else new ones, saved there."""
    user, password = settings.flower_user, settings.flower_password
    if user and password:
        return Login(user, password.get_secret_value(), "from JOBS_FLOWER_USER / JOBS_FLOWER_PASSWORD")
    if password:
        return Login(user or "admin", password.get_secret_value(), "from JOBS_FLOWER_PASSWORD")
    saved = _read_login(path)
    if saved is None:
        saved = _save_login(path, user or "admin", secrets.token_urlsafe(12))
    return Login(user or saved.user, saved.password, f"kept in {path}; delete it for new ones")


def _read_login(path: Path) -> Login | None:
    from dotenv import dotenv_values

    if not path.exists():
        return None
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {path} ({error}); delete it to make new Flower credentials", 2)
    user, password = values.get("JOBS_FLOWER_USER"), values.get("JOBS_FLOWER_PASSWORD")
    if not user or not password:
        fail(f"{path} lacks JOBS_FLOWER_USER or JOBS_FLOWER_PASSWORD; delete it to make new ones", 2)
    return Login(user, password, str(path))


def _save_login(path: Path, user: str, password: str) -> Login:
    text = (
        "# Flower's credentials for `jobs dev`, made on its first start (git-ignored).\n"
        "# Delete this file for new ones; JOBS_FLOWER_USER / JOBS_FLOWER_PASSWORD override it.\n"
        f"JOBS_FLOWER_USER={_quoted(user)}\nJOBS_FLOWER_PASSWORD={_quoted(password)}\n"
    )
    try:
        # Only the owner may read it; O_EXCL: of two `jobs dev` starting at once, one writes, one reads.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_login(path) or Login(user, password, str(path))
    except OSError as error:
        fail(f"cannot save Flower's credentials in {path} ({error})", 2)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    return Login(user, password, str(path))


def _quoted(value: str) -> str:
    """A single-quoted dotenv value (what ``dotenv.set_key`` writes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def jobs_command(executable: str, in_venv: bool, on_path: str | None) -> str:
    """How to run this installation's ``jobs`` from another terminal.

    ``make dev`` runs through ``uv run``, which puts the virtualenv on PATH for
    ``jobs dev`` only: a user's shell finds ``jobs`` only if they activated it.
    The script's absolute path works from anywhere.
    """
    script = Path(os.path.abspath(executable)).parent / "jobs"
    if not script.exists():
        return f"{shlex.quote(executable)} -m jobs"
    if not in_venv and on_path and os.path.samefile(on_path, script):
        return "jobs"
    return shlex.quote(str(script))


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
            f"Redis is unreachable at {_safe_redis(settings.broker_url)} ({first_line(error)}); "
            f"start one, for example: {REDIS_HINT}",
            3,
        )


def _safe_redis(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def _sa_error() -> type[Exception]:
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError


def _running_on(settings: Settings, node: str) -> int | None:
    """Jobs the ledger says run on worker ``node`` (None: the ledger did not answer)."""
    from jobs import db, observe

    try:
        with db.transaction(settings) as conn:
            return sum(job.worker == node for job in observe.running_jobs(conn, limit=1000))
    except (JobsError, _sa_error()):
        return None


def _finished(settings: Settings, job: uuid.UUID) -> str | None:
    from jobs import lookup

    try:
        row = lookup.states_of(settings, [job]).get(job)
    except (JobsError, _sa_error()):
        return None
    if row and row["state"] in ("succeeded", "failed", "cancelled"):
        return str(row["state"])
    return None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _stopping_line(settings: Settings, step: Step, node: str) -> str:
    if step is Step.GRACEFUL:
        running = _running_on(settings, node)
        if running is None:
            waiting = "waiting for running jobs to finish"
        elif running:
            waiting = f"waiting for {_plural(running, 'running job')}"
        else:
            waiting = "no job is running"
        return f"stopping: {waiting} (Ctrl-C again to stop at once)"
    if step is Step.AT_ONCE:
        return "stopping at once: running jobs go back to their queue (Ctrl-C again to kill)"
    return "killing worker, beat and Flower"


@click.command()
@click.option("--concurrency", type=click.IntRange(1), default=2, show_default=True)
def dev(concurrency: int) -> None:
    """Run the whole platform in the foreground: migrations, a worker, beat and Flower.

    Ctrl-C lets running jobs finish, then stops; Ctrl-C again stops at once (running jobs are handed back).
    """
    from jobs import migrate

    settings = context.settings()
    _check_servers(settings)
    migrate.upgrade(settings)
    processes = Supervisor()
    processes.catch_signals()  # from now on a Ctrl-C stops the children in order, never midway
    output.err.print(f"ledger schema at {migrate.current(settings)}")
    login = flower_login(settings, Path(CREDENTIALS_FILE))
    node = f"dev-{os.getpid()}@{socket.gethostname()}"
    _remove_flower_leftovers()
    if not processes.stopping:
        _start(processes, concurrency, node, login)
    ping = _submit_ping(processes)
    command = jobs_command(sys.executable, sys.prefix != sys.base_prefix, shutil.which("jobs"))
    ping_deadline = time.monotonic() + PING_TIMEOUT
    while not processes.finished():
        processes.advance(lambda step: output.err.print(_stopping_line(settings, step, node), markup=False))
        for child in processes.exited_unasked():
            output.err.print(f"[red]{child.name} exited with code {child.process.returncode}; stopping[/]")
            processes.request(Step.GRACEFUL)
        if ping is not None and not processes.stopping:
            state = _finished(settings, ping)
            if state is None and time.monotonic() > ping_deadline:
                state = "not finished yet"
            if state is not None:
                _say_running(settings, ping, state, login, command)
                ping = None
        time.sleep(0.2)
    _remove_flower_leftovers()
    output.err.print("stopped worker, beat and Flower")
    troubled = [child for child in processes.children if child.unexpected or child.killed]
    sys.exit(1 if troubled else 0)


def _start(processes: Supervisor, concurrency: int, node: str, login: Login) -> None:
    jobs_cmd = [sys.executable, "-m", "jobs"]
    env = dict(os.environ, JOBS_FLOWER_USER=login.user, JOBS_FLOWER_PASSWORD=login.password)
    # The dev worker keeps Celery's own SIGTERM, the warm shutdown (running jobs finish, however long);
    # `jobs worker` keeps a REMAP_SIGTERM already set, and an empty one means "no remap" to Celery.
    # A second Ctrl-C sends SIGQUIT, the cold shutdown: with no soft-shutdown window it hands the
    # running jobs back at once.
    # Task events always on, so that the demo job shows in Flower even before Flower first asks.
    worker_env = dict(
        env, REMAP_SIGTERM="", JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT="0", JOBS_WORKER_TASK_EVENTS="on"
    )
    worker = [*jobs_cmd, "worker", "-c", str(concurrency), "-n", node]
    processes.spawn("worker", worker, worker_env, at_once=signal.SIGQUIT)
    processes.spawn("beat", [*jobs_cmd, "beat"], env, grace=SIDE_GRACE)
    processes.spawn("flower", [*jobs_cmd, "flower", "--state-file", STATE_FILE], env, grace=SIDE_GRACE)


def _submit_ping(processes: Supervisor) -> uuid.UUID | None:
    if processes.stopping:
        return None
    try:
        job = context.producer().submit("ping", {"message": "hello from jobs dev"}, submitted_by="jobs dev")
    except JobsError as error:
        output.err.print(f"[red]could not submit a ping job: {error.message}; stopping[/]")
        processes.request(Step.GRACEFUL)
        return None
    output.err.print(f"submitted a ping job: {job}")
    return job


def _say_running(settings: Settings, ping: uuid.UUID, state: str, login: Login, command: str) -> None:
    url = f"http://{settings.flower_address}:{settings.flower_port}"
    output.err.print(f"job {ping} {state}; see it with: {command} status {ping}", markup=False)
    credentials = f"user {login.user}, password {login.password}; {login.source}"
    output.err.print(f"Flower: {url}  ({credentials})", markup=False)
    output.err.print(
        f"the platform is running; submit jobs from another terminal ({command} submit ping);"
        " Ctrl-C stops it (running jobs finish first)",
        markup=False,
    )


def _remove_flower_leftovers() -> None:
    """Flower saves its state to ``STATE_FILE.tmp*`` then renames it: a killed Flower leaves those."""
    for leftover in Path().glob(f"{STATE_FILE}.tmp*"):
        leftover.unlink(missing_ok=True)
