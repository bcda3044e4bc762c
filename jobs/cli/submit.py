"""``jobs submit``: one job from options, or many from a JSON-lines file."""

from __future__ import annotations

import gc
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from jobs.cli import context, output
from jobs.cli.completion import kind_names, queue_names
from jobs.cli.options import DURATION, INSTANT, TOO_LONG, json_output, parse_param, payload_params
from jobs.cli.output import emit_json, fail
from jobs.errors import BadInput

if TYPE_CHECKING:
    from jobs.producer import JobId

__all__ = ["submit"]

BATCH = 2000


def _payload(
    payload_json: str | None, payload_file: IO[str] | None, params: tuple[str, ...]
) -> dict[str, Any]:
    data: Any = {}
    source = "--payload"
    if payload_json is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    try:
        if payload_json is not None:
            data = json.loads(payload_json)
        elif payload_file is not None:
            source = f"--payload-file {payload_file.name}"
            data = json.load(payload_file)
    except json.JSONDecodeError as error:
        raise click.BadParameter(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", param_hint=source
        ) from None
    except ValueError:
        raise click.BadParameter(TOO_LONG, param_hint=source) from None
    if not isinstance(data, dict):
        raise click.BadParameter("the payload must be a JSON object", param_hint=source)
    data.update(dict(parse_param(p) for p in params))
    return data


@click.command()
@click.argument("kind", shell_complete=kind_names)
@payload_params
@click.option("--payload", "payload_json", metavar="JSON", help="The payload as a JSON object.")
@click.option(
    "--payload-file", type=click.File("r"), help="Read the payload from a JSON file ('-' for stdin)."
)
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Submit one job per line of a JSON-lines file, all or nothing.",
)
@click.option(
    "--queue",
    help="Queue to run on (default: the kind's, else JOBS_DEFAULT_QUEUE).",
    shell_complete=queue_names,
)
@click.option("--priority", type=click.IntRange(0, 9), help="0 runs first, 9 last (default: the kind's).")
@click.option("--delay", type=DURATION, help="Run no earlier than this from now (30s, 10m, 2h).")
@click.option("--at", "at", type=INSTANT, help="Run no earlier than this ISO 8601 time.")
@click.option(
    "--key",
    "idempotency_key",
    help="Idempotency key: a second submit with the same payload returns the first job; "
    "another payload is refused.",
)
@click.option("--max-attempts", type=click.IntRange(1, 1000), help="Attempts before the job fails for good.")
@click.option("--wait", is_flag=True, help="Wait for the job to finish; the exit code tells how it ended.")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (exit 124).")
@json_output()
def submit(
    kind: str,
    params: tuple[str, ...],
    payload_json: str | None,
    payload_file: IO[str] | None,
    from_file: Path | None,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    at: datetime | None,
    idempotency_key: str | None,
    max_attempts: int | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Submit a job of KIND; prints its id once it is safe in the ledger.

    \b
    Examples:
      jobs submit ping
      jobs submit http.post -p url=https://example.com/hook --payload '{"body": {"a": 1}}'
      jobs submit ping --delay 10m --key nightly-2026-01-31
      jobs submit ping --from-file jobs.jsonl
    """
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "at": at,
        "max_attempts": max_attempts,
        "submitted_by": context.who(),
    }
    if from_file is not None:
        if params or payload_json or payload_file or idempotency_key or wait:
            raise click.UsageError("--from-file takes no -p, --payload, --payload-file, --key or --wait")
        _submit_file(kind, from_file, options, as_json)
        return
    payload = _payload(payload_json, payload_file, params)
    job = context.producer().submit(kind, payload, idempotency_key=idempotency_key, **options)
    if as_json and not wait:
        emit_json(
            {
                "id": job,
                "duplicate": job.duplicate,
                "reason": job.reason,
                "published": job.published,
                "held": job.held,
            }
        )
    elif not as_json:
        click.echo(str(job))
    if job.duplicate:
        output.err.print(_duplicate(kind, job, idempotency_key), markup=False)
    elif job.held:
        output.err.print(
            f"held: its limits have no room now; it starts when they admit it (jobs explain {job})"
        )
    elif not job.published and not _delayed(delay, at):
        output.err.print(
            "[yellow]warning:[/] the broker (Redis) is unreachable; the job is saved in the ledger "
            "and will be published when Redis returns"
        )
    if wait:
        from jobs.cli.waiting import wait_for

        sys.exit(wait_for(job, timeout=timeout, as_json=as_json))


def _duplicate(kind: str, job: JobId, key: str | None) -> str:
    """One line: why no job was created."""
    definition = context.registry().get(kind)
    if job.reason == "unique" and definition.unique is not None:
        return f"duplicate of job {job}: {definition.unique.describe()} (unique window)"
    if job.reason == "debounce" and definition.debounce is not None:
        period = definition.debounce.period
        return f"debounced into job {job}: it now runs {period:g}s from now, with this payload"
    return f"the key {key!r} is already in use: this is the existing job"


def _delayed(delay: float | None, at: datetime | None) -> bool:
    return bool(delay) or at is not None


def _submit_file(kind: str, path: Path, options: dict[str, Any], as_json: bool) -> None:
    # A bulk load allocates a few objects per line and frees none until it ends: the cyclic
    # garbage collector's passes over them cost a fifth of the command's CPU. The command runs
    # nothing else meanwhile, so the collector pauses until it is done.
    enabled = gc.isenabled()
    gc.disable()
    try:
        _load_file(kind, path, options, as_json)
    finally:
        if enabled:
            gc.enable()


def _load_file(kind: str, path: Path, options: dict[str, Any], as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from jobs.cli.output import err

    lines = _read_lines(path)
    producer = context.producer()
    payloads: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, line in lines:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            fail(f"{path}: line {number}: not valid JSON ({error.msg}); nothing was submitted", 2)
        except ValueError:
            fail(f"{path}: line {number}: {TOO_LONG}; nothing was submitted", 2)
        if not isinstance(data, dict):
            fail(f"{path}: line {number}: a payload must be a JSON object; nothing was submitted", 2)
        payloads.append(data)
        numbers.append(number)
    if not payloads:
        fail(f"{path}: no payloads in the file; nothing was submitted", 2)
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks = {phase: bar.add_task(phase, total=len(payloads)) for phase in ("checked", "published")}

        def show(phase: str, count: int) -> None:
            if phase in tasks:
                bar.update(tasks[phase], completed=count)

        try:
            ids = producer.submit_many(kind, payloads, progress=show, **options)
        except BadInput as error:
            item, _, rest = error.message.partition(": ")
            if not item.startswith("item "):
                raise
            where = numbers[int(item.removeprefix("item ")) - 1]
            fail(f"{path}: line {where}: {rest}; nothing was submitted", 2)
    if as_json:
        held = sum(1 for i in ids if i.held)
        emit_json(
            {
                "count": len(ids),
                "ids": [str(i) for i in ids],  # as text before json.dumps: its default= per id costs more
                "published": all(i.published or i.held for i in ids),
                "held": held,
            }
        )
    else:
        click.echo("\n".join(map(str, ids)))  # one write: 100,000 echo calls cost a second
        err.print(f"submitted {len(ids)} {kind} job(s)")
    held_count = sum(1 for i in ids if i.held)
    if held_count:
        err.print(f"{held_count} job(s) held: their limits have no room now; they start as slots free")
    unsent = [i for i in ids if not i.published and not i.held]
    if unsent and not options.get("delay") and not options.get("at"):
        err.print("[yellow]warning:[/] Redis is unreachable; the jobs will be published when it returns")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"{path}: cannot read ({error.strerror})", 2)
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text", 2)
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
