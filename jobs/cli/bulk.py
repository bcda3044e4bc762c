"""``jobs cancel`` and ``jobs retry``: on the jobs named by id, or on every job a filter selects.

With ids the command acts at once (the ids are the confirmation); every id
must exist and be in a state the action allows, or nothing is done. With
filters it prints how many jobs match and acts only with ``--yes``;
``--dry-run`` lists them instead. Without either it changes nothing and exits
2, so a script that forgot ``--yes`` cannot take the count for success.
An empty match is not an error (exit 0).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from jobs.cli import context
from jobs.cli.completion import kind_names, queue_names
from jobs.cli.options import SINCE, json_output
from jobs.cli.output import emit_json, humanize, state
from jobs.errors import BadInput, InvalidTransition, JobNotFound
from jobs.states import STATES

# The ledger, Celery and rich are imported in the functions that use them: completing a
# command line (``jobs cancel --queue <TAB>``) loads none of them.
if TYPE_CHECKING:
    from jobs import control, lookup

__all__ = ["cancel", "retry"]

ACTS = {"cancel": "cancel", "retry": "retry"}


def _filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--state", "states", multiple=True, type=click.Choice(STATES), help="Jobs in this state."
        ),
        click.option("--kind", "kinds", multiple=True, help="Jobs of this kind.", shell_complete=kind_names),
        click.option(
            "--queue", "queues", multiple=True, help="Jobs on this queue.", shell_complete=queue_names
        ),
        click.option("--since", type=SINCE, help="Created at or after (ISO time, or a duration ago: 1h)."),
        click.option("--until", type=SINCE, help="Created before (ISO time, or a duration ago)."),
        click.option("--yes", is_flag=True, help="Act on every job the filters select."),
        click.option("--dry-run", is_flag=True, help="List the jobs the filters select; change nothing."),
        json_output(),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _unique_ids(texts: Sequence[str]) -> list[uuid.UUID]:
    from jobs import lookup

    return list(dict.fromkeys(lookup.parse_id(text) for text in texts))


def _select(
    action: str, job_ids: Sequence[str], filters: lookup.Filters, yes: bool, dry_run: bool
) -> tuple[list[control.Match], bool]:
    """The jobs to act on, and whether they came from filters."""
    from jobs import control, lookup

    filtered = bool(filters.states or filters.kinds or filters.queues or filters.since or filters.until)
    if yes and dry_run:
        raise BadInput("--yes and --dry-run exclude each other")
    if job_ids and filtered:
        raise BadInput("give job ids or filters, not both")
    if not job_ids and not filtered:
        raise BadInput(f"give job ids, or filters (--state, --kind, --queue, --since, --until) to {action}")
    if filtered:
        return control.matching(context.settings(), filters, action), True
    ids = _unique_ids(job_ids)
    found = lookup.states_of(context.settings(), ids)
    allowed = control.ACTIONS[action]
    for job_id in ids:
        if job_id not in found:
            raise JobNotFound(f"no job with id {job_id}")
        now = found[job_id]["state"]
        if now not in allowed:
            if action == "cancel":
                raise InvalidTransition(
                    f"job {job_id} is already {now}; only unfinished jobs can be cancelled"
                )
            raise InvalidTransition(f"job {job_id} is {now}; only failed or cancelled jobs can be retried")
    return [control.Match(job_id, "", found[job_id]["state"], "", None) for job_id in ids], False


def _gate(
    action: str, matches: list[control.Match], filtered: bool, yes: bool, dry_run: bool, as_json: bool
) -> bool:
    """Report the match; True when the action should go ahead."""
    from jobs.cli.output import err

    if filtered and not as_json and matches and (yes or dry_run):
        err.print(f"{len(matches)} job(s) match")
    if dry_run:
        if as_json:
            emit_json({"matched": len(matches), "dry_run": True, "jobs": [_match_json(m) for m in matches]})
        else:
            _match_table(matches)
            err.print(f"dry run: nothing changed; pass --yes to {action} them")
        return False
    if not matches:
        if as_json:
            emit_json({"matched": 0, "dry_run": False, "jobs": []})
        else:
            err.print("no job matches; nothing to do")
        return False
    if filtered and not yes:
        raise BadInput(f"{len(matches)} job(s) match; pass --yes to {action} them, or --dry-run to list them")
    return True


def _match_json(match: control.Match) -> dict[str, Any]:
    return {
        "id": match.id,
        "kind": match.kind or None,
        "state": match.state,
        "queue": match.queue or None,
        "created_at": match.created_at,
    }


def _match_table(matches: list[control.Match]) -> None:
    from rich.table import Table

    from jobs.cli.output import console

    table = Table(box=None, pad_edge=False)
    for column in ("id", "kind", "state", "queue", "created"):
        table.add_column(column, no_wrap=True)
    for match in matches:
        table.add_row(str(match.id), match.kind, state(match.state), match.queue, humanize(match.created_at))
    console.print(table)


@contextmanager
def _progress(label: str, total: int, shown: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only on a terminal, and not with --json); yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from jobs.cli.output import err

    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not (shown and err.is_terminal),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda count: bar.advance(task, count)


@click.command()
@click.argument("job_ids", nargs=-1)
@_filter_options
def cancel(
    job_ids: tuple[str, ...],
    states: tuple[str, ...],
    kinds: tuple[str, ...],
    queues: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Cancel jobs by id, or every unfinished job the filters select (with --yes).

    Queued, delayed and retrying jobs are cancelled at once; running ones are
    cancelled and their workers told to stop them.
    """
    from jobs import control, lookup
    from jobs.app import get_app  # Celery is needed only to tell workers to stop running jobs
    from jobs.cli.output import err

    filters = lookup.Filters(states, kinds, queues, since, until)
    matches, filtered = _select("cancel", job_ids, filters, yes, dry_run)
    if not _gate("cancel", matches, filtered, yes, dry_run, as_json):
        return
    with _progress("cancelling", len(matches), filtered and not as_json) as advance:
        results = control.cancel_many(
            context.settings(), get_app(), [m.id for m in matches], progress=advance
        )
    done = [r for r in results if r.was is not None]
    if as_json:
        emit_json(
            {
                "matched": len(matches),
                "dry_run": False,
                "cancelled": len(done),
                "skipped": len(results) - len(done),
                "jobs": [{"id": r.id, "was": r.was, "state": r.state} for r in results],
            }
        )
        return
    for result in results:
        if result.was is None:
            click.echo(f"{result.id} skipped, it is {result.state or 'gone'}")
        else:
            note = " (its worker is told to stop it)" if result.was == "running" else ""
            click.echo(f"{result.id} cancelled, was {result.was}{note}")
    if filtered:
        running = sum(1 for r in done if r.was == "running")
        skipped = len(results) - len(done)
        err.print(
            f"cancelled {len(done)} job(s)"
            + (f", {running} of them running (their workers are told to stop them)" if running else "")
            + (f"; skipped {skipped} that finished in the meantime" if skipped else "")
        )


@click.command()
@click.argument("job_ids", nargs=-1)
@_filter_options
def retry(
    job_ids: tuple[str, ...],
    states: tuple[str, ...],
    kinds: tuple[str, ...],
    queues: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Run failed or cancelled jobs again, each as a new job linked to the old one.

    By id, or every failed or cancelled job the filters select (with --yes).
    A job is retried once: a job that already has a retry is skipped (retry
    the retry to run it again), so running the same command twice is safe.
    """
    from jobs import control, lookup
    from jobs.cli.output import err

    filters = lookup.Filters(states, kinds, queues, since, until)
    matches, filtered = _select("retry", job_ids, filters, yes, dry_run)
    if not _gate("retry", matches, filtered, yes, dry_run, as_json):
        return
    with _progress("retrying", len(matches), filtered and not as_json) as advance:
        results = control.replay_many(
            context.producer(), [m.id for m in matches], submitted_by="cli:retry", progress=advance
        )
    new = [r for r in results if r.new is not None]
    if as_json:
        emit_json(
            {
                "matched": len(matches),
                "dry_run": False,
                "retried": len(new),
                "skipped": len(results) - len(new),
                "jobs": [
                    {
                        "retry_of": r.id,
                        "id": r.new if r.new is not None else r.earlier,
                        "published": r.new.published if r.new is not None else None,
                        "skipped": r.skipped,
                    }
                    for r in results
                ],
            }
        )
        return
    for result in results:
        if result.new is not None:
            click.echo(str(result.new))
            if not filtered:
                err.print(f"job {result.id} submitted again as {result.new}")
        elif result.earlier is not None and not filtered:
            click.echo(str(result.earlier))
            err.print(
                f"job {result.id} was already retried as {result.earlier}; not submitted again "
                f"(retry {result.earlier} to run it once more)"
            )
        else:
            err.print(f"job {result.id} skipped: {result.skipped}")
    if filtered:
        skipped = len(results) - len(new)
        err.print(
            f"retried {len(new)} job(s) as new jobs" + (f"; skipped {skipped} (see above)" if skipped else "")
        )
