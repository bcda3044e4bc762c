"""How ``jobs workflow`` prints for people: one workflow's steps as a graph, and lists of workflows.

The graph is a table in topological order (every parent above its children), each step
indented by its depth (the longest path to it from a first step) and naming in ``after`` the
steps it comes after; a held step says which of them it still waits for. Big workflows stay
readable without ``--all``:

- a run of more than ``SIBLING_RUN`` siblings (steps at the same depth, of the same kind, after
  the same steps: a fan-out) is one row that counts their states, names the range, and quotes
  the first failure;
- past ``MAX_ROWS`` rows, runs of succeeded rows fold into one line each, and what still does
  not fit is cut, with a line saying how many rows were left out.

``--all`` draws every step; ``--json`` always lists every step. rich is imported in the
functions that print: importing this module (when a command line is completed) loads none of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs.cli.output import humanize, state
from jobs.states import STATES, TERMINAL_STATES

if TYPE_CHECKING:
    from jobs.workflow_views import StepView, WorkflowSummary, WorkflowView

__all__ = ["MAX_ROWS", "SIBLING_RUN", "Row", "counts_text", "graph", "rows_of", "span", "workflows"]

#: Siblings drawn one by one; a longer run of them is one row (``--all`` draws each).
SIBLING_RUN = 10
#: Rows drawn before succeeded runs fold and the rest is cut (``--all`` draws every one).
MAX_ROWS = 100
#: Depths indented; deeper steps (a long chain) stay at this indentation.
INDENT_LEVELS = 8
#: Parents named in ``after`` before they are summarised as a range.
AFTER_NAMED = 4


@dataclass(slots=True)
class Row:
    """One line of the graph: a step, a run of sibling steps, or a fold of succeeded rows."""

    name: str
    depth: int
    kind: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    attempt: str = ""
    run: int = 1
    started: datetime | None = None
    took: str = ""
    after: str = ""
    error: str = ""
    fold: bool = False

    @property
    def steps(self) -> int:
        return sum(self.counts.values())


def span(seconds: float) -> str:
    """A duration for people: 0.42s, 12.3s, 4m05s, 2h07m."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def counts_text(counts: dict[str, int], *, colour: bool = True) -> str:
    """``3 succeeded, 1 running``: the states in lifecycle order."""
    parts = []
    for name in STATES:
        if counts.get(name):
            parts.append(f"{counts[name]} {state(name) if colour else name}")
    return ", ".join(parts) or "no steps"


def _took(step: StepView, now: datetime) -> str:
    if step.duration is not None:
        return span(step.duration)
    if step.started_at is not None and step.state == "running":
        return span(max((now - step.started_at).total_seconds(), 0.0)) + "…"
    return ""


def _names(names: Sequence[str]) -> str:
    if len(names) <= AFTER_NAMED:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)})"


def _after(step: StepView, states: dict[str, str]) -> str:
    """The steps it comes after (``(any end)``: it runs whatever their outcome), and while it is
    held, those it still waits for."""
    parents = [name for name, _ in step.after]
    if len(parents) > AFTER_NAMED:
        text = _names(parents)
    else:
        text = ", ".join(f"{name} (any end)" if when == "finished" else name for name, when in step.after)
    if step.state == "held" and step.pending:
        waiting = [name for name in parents if states.get(name) not in TERMINAL_STATES]
        if waiting:
            if len(waiting) <= AFTER_NAMED:
                text += f"; waits for {', '.join(waiting)}"
            else:
                text += "; waits for all" if len(waiting) == len(parents) else f"; waits for {len(waiting)}"
    return text


def _step_row(step: StepView, depth: int, states: dict[str, str], now: datetime) -> Row:
    return Row(
        name=step.name,
        depth=depth,
        kind=step.kind,
        counts={step.state: 1},
        attempt=f"{step.attempt}/{step.max_attempts}",
        run=step.replaced + 1,
        started=step.started_at,
        took=_took(step, now),
        after=_after(step, states),
        error=(step.error or "").strip().split("\n")[0],
    )


def _run_row(run: list[StepView], depth: int, states: dict[str, str], now: datetime) -> Row:
    """Siblings as one row: their names' range, their states counted, the longest duration."""
    counts: dict[str, int] = {}
    for step in run:
        counts[step.state] = counts.get(step.state, 0) + 1
    attempts = sorted({step.attempt for step in run})
    most = max(step.max_attempts for step in run)
    low, high = attempts[0], attempts[-1]
    started = [step.started_at for step in run if step.started_at is not None]
    durations = [step.duration for step in run if step.duration is not None]
    failed = next((step for step in run if step.state == "failed"), None)
    error = ""
    if failed is not None:
        first = (failed.error or "").strip().split("\n")[0]
        error = f"{counts['failed']} failed, first {failed.name}: {first}"
    waiting = _after(run[0], states)
    return Row(
        name=f"{run[0].name} … {run[-1].name} ({len(run)} steps)",
        depth=depth,
        kind=run[0].kind,
        counts=counts,
        attempt=f"{low}/{most}" if low == high else f"{low}-{high}/{most}",
        run=max(step.replaced for step in run) + 1,
        started=min(started) if started else None,
        took=f"≤ {span(max(durations))}" if durations else "",
        after=waiting,
        error=error,
    )


def rows_of(view: WorkflowView, *, everything: bool, now: datetime) -> tuple[list[Row], list[str]]:
    """The graph's rows, and notes on what was summarised or left out."""
    states = {step.name: step.state for step in view.steps}
    depth: dict[str, int] = {}
    for step in view.steps:  # parents come first
        depth[step.name] = 1 + max((depth[name] for name, _ in step.after if name in depth), default=-1)
    if everything:
        return [_step_row(step, depth[step.name], states, now) for step in view.steps], []
    runs: dict[tuple[Any, ...], list[StepView]] = {}
    for step in view.steps:
        runs.setdefault((depth[step.name], step.kind, step.after), []).append(step)
    rows: list[Row] = []
    notes: list[str] = []
    summarised = 0
    for key, run in runs.items():
        if len(run) > SIBLING_RUN:
            rows.append(_run_row(run, key[0], states, now))
            summarised += len(run)
        else:
            rows.extend(_step_row(step, key[0], states, now) for step in run)
    if summarised:
        notes.append(f"{summarised} sibling steps are summarised in runs; --all draws every step")
    if len(rows) > MAX_ROWS:
        rows = _fold(rows)
        if len(rows) > MAX_ROWS:
            left = rows[MAX_ROWS:]
            rows = rows[:MAX_ROWS]
            hidden = sum(row.steps for row in left)
            notes.append(f"… {len(left)} more rows ({hidden} steps) not drawn; --all draws every step")
    return rows, notes


def _fold(rows: list[Row]) -> list[Row]:
    """Runs of two or more rows whose steps all succeeded, as one line each."""
    folded: list[Row] = []
    run: list[Row] = []

    def flush() -> None:
        if len(run) >= 2:
            steps = sum(row.steps for row in run)
            folded.append(
                Row(f"… {steps} steps succeeded", run[0].depth, counts={"succeeded": steps}, fold=True)
            )
        else:
            folded.extend(run)
        run.clear()

    for row in rows:
        if set(row.counts) == {"succeeded"}:
            run.append(row)
        else:
            flush()
            folded.append(row)
    flush()
    return folded


def _header(summary: WorkflowSummary) -> list[str]:
    from rich.markup import escape

    lines = [f"workflow [bold]{escape(summary.name)}[/] {summary.id}  {state(summary.state)}"]
    made = f"{summary.steps} steps: {counts_text(summary.counts)} · created {humanize(summary.created_at)}"
    if summary.submitted_by:
        made += f" by {escape(summary.submitted_by)}"
    if summary.schedule_name:
        made += f" · schedule {escape(summary.schedule_name)}"
    lines.append(made)
    if summary.finished_at is not None:
        took = span(max((summary.finished_at - summary.created_at).total_seconds(), 0.0))
        lines.append(f"finished {humanize(summary.finished_at)} ({took} after it was created)")
    return lines


def graph(view: WorkflowView, *, everything: bool, now: datetime) -> None:
    """Print a workflow: its header, then its steps as a graph (see the module's docstring)."""
    from rich.markup import escape
    from rich.table import Table

    from jobs.cli.output import console, err

    for line in _header(view.summary):
        console.print(line, markup=True)
    rows, notes = rows_of(view, everything=everything, now=now)
    table = Table(box=None, pad_edge=False)
    columns = ["step", "kind", "state", "try"]
    reran = any(row.run > 1 for row in rows)
    if reran:
        columns.append("run")
    columns += ["started", "took"]
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("after", overflow="ellipsis", no_wrap=True, max_width=60)
    errors = any(row.error for row in rows)
    if errors:
        table.add_column("error", overflow="ellipsis", no_wrap=True, max_width=60)
    for row in rows:
        level = min(row.depth, INDENT_LEVELS)
        name = "  " * level + ("└ " if row.depth else "") + row.name
        if row.fold:
            table.add_row(f"[dim]{escape(name)}[/]")
            continue
        cells = [escape(name), escape(row.kind), _state_cell(row), row.attempt]
        if reran:
            cells.append(str(row.run) if row.run > 1 else "")
        cells += [humanize(row.started), row.took, escape(row.after)]
        if errors:
            cells.append(f"[red]{escape(row.error)}[/]" if row.error else "")
        table.add_row(*cells)
    console.print(table)
    for note in notes:
        err.print(note, markup=False)


def _state_cell(row: Row) -> str:
    if len(row.counts) == 1 and row.steps == 1:
        return state(next(iter(row.counts)))
    return counts_text(row.counts)


def workflows(found: Sequence[WorkflowSummary], *, now: datetime) -> None:
    """Print a list of workflows, one row each."""
    from rich.markup import escape
    from rich.table import Table

    from jobs.cli.output import console

    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "state", "steps", "created", "took", "by"):
        table.add_column(column, no_wrap=True)
    for summary in found:
        end = summary.finished_at if summary.finished_at is not None else now
        took = span(max((end - summary.created_at).total_seconds(), 0.0))
        table.add_row(
            str(summary.id),
            escape(summary.name),
            state(summary.state),
            f"{summary.steps}: {counts_text(summary.counts)}",
            humanize(summary.created_at),
            took if summary.finished_at is not None else f"{took}…",
            escape(summary.submitted_by or summary.schedule_name or ""),
        )
    console.print(table)
