"""``jobs top``: the platform live, refreshed every second, in a terminal as small as 80x24.

Per queue the depth (ledger and Redis), the oldest waiting job and the last
minute's throughput; the busiest keys of the limits (running against the cap,
held jobs waiting), when any limit holds jobs; running jobs with kind, worker,
runtime and progress; recent failures; the leader and the workers that answer. ``q`` (or Ctrl-C)
quits. The ledger and Redis are read every refresh; the workers are asked in
a background thread every few seconds, since asking them costs a timeout.

Without a terminal (piped, ``--once``, ``--json``) it prints one frame and exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json
from jobs.cli.processes import worker_queues

# rich and the ledger are imported in the functions that use them: completing a command line
# (``jobs top --<TAB>``) loads none of them.
if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from jobs import fleet, snapshot
    from jobs.settings import Settings

__all__ = ["render", "top"]

WORKERS_EVERY = 5.0
FIXED_LINES = 8  # header, three section titles, three table headers, one spare
LIMIT_LINES = 2  # the limits section's title and table header, when it is shown


def _table(*columns: tuple[str, str, int | None]) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1), expand=False)
    for name, justify, width in columns:
        table.add_column(
            name,
            justify="right" if justify == "r" else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=width,
        )
    return table


def _progress(report: dict[str, object] | None) -> str:
    if not report:
        return ""
    done, total = report.get("done"), report.get("total")
    if isinstance(done, int | float) and isinstance(total, int | float) and total:
        percent = f"{100 * done / total:3.0f}%"
    else:
        percent = str(done) if done is not None else ""
    message = report.get("message")
    return f"{percent} {message}" if message else percent


def _budget(
    rows: int | None, queues: int, running: int, failures: int, limits: int = 0
) -> tuple[int, int, int, int]:
    """How many rows of each table (queues, running, failures, limits) fit in ``rows`` lines of
    content (None: all)."""
    if rows is None:
        return queues, running, failures, limits
    room = max(4 if limits else 3, rows)
    shown_queues = min(queues, max(1, room // 3))
    room -= shown_queues
    shown_limits = min(limits, max(1, room // 4))
    room -= shown_limits
    shown_failures = min(failures, max(1, room // 3))
    shown_running = min(running, room - shown_failures)
    shown_failures = min(failures, room - shown_running)
    return shown_queues, shown_running, shown_failures, shown_limits


def _header(taken: snapshot.Snapshot) -> Text:
    from rich.text import Text

    ledger = taken.ledger
    line = Text()
    line.append("jobs top ", style="bold")
    line.append(ledger.now.astimezone().strftime("%H:%M:%S"))
    line.append("  leader ")
    if ledger.leader:
        line.append(ledger.leader.split(":", 1)[-1], style="green")
    else:
        line.append("NONE", style="bold red")
    line.append("  workers ")
    if taken.workers is None:
        line.append("?", style="yellow")
    else:
        live_workers = [worker for worker in taken.workers if worker.live]
        busy = sum(len(worker.active) for worker in live_workers)
        slots = sum(worker.concurrency or 0 for worker in live_workers)
        line.append(f"{len(live_workers)}", style="green" if live_workers else "bold red")
        line.append(f" ({busy}/{slots} busy)")
    line.append("  q quits", style="dim")
    return line


def render(taken: snapshot.Snapshot, height: int | None) -> RenderableType:
    """One frame; with ``height`` it fits that many lines (rows beyond are counted, not shown).

    The busiest queues come first, then the longest-running jobs, then the latest failures.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    from jobs import fleet, observe

    ledger = taken.ledger
    fixed = FIXED_LINES + (LIMIT_LINES if ledger.limits else 0)
    rows = None if height is None else height - fixed
    n_queues, n_running, n_failures, n_limits = _budget(
        rows, len(taken.queues), len(ledger.running), len(ledger.failures), len(ledger.limits)
    )
    queues = _table(
        ("queue", "l", 16),
        ("queued", "r", None),
        ("redis", "r", None),
        ("run", "r", None),
        ("later", "r", None),
        ("oldest", "r", None),
        ("ok/min", "r", None),
        ("fail/min", "r", None),
        ("", "l", 6),
    )
    # Paused queues first (an operator must not forget them), then the deepest.
    busiest = sorted(taken.queues, key=lambda view: (not view.paused, -view.queued, view.name))
    for view in busiest[:n_queues]:
        stats = view.ledger
        states = stats.states if stats else {}
        redis = "?" if view.redis is None else str(view.redis.ready)
        oldest = stats.oldest_waiting if stats else None
        queues.add_row(
            escape(view.name),
            str(view.queued),
            f"[bold red]≠{redis}[/]" if view.mismatch else redis,
            str(states.get("running", 0)),
            str(states.get("scheduled", 0) + states.get("retrying", 0)),
            "-" if oldest is None else observe.span(oldest),
            str(stats.succeeded_recently if stats else 0),
            f"[red]{stats.failed_recently}[/]" if stats and stats.failed_recently else "0",
            "[yellow]paused[/]" if view.paused else "",
        )
    live = None if taken.workers is None else fleet.live_nodes(taken.workers)
    running = _table(
        ("job", "l", 8), ("kind", "l", 18), ("worker", "l", 18), ("for", "r", None), ("progress", "l", 22)
    )
    for job in ledger.running[:n_running]:
        lost = (job.lease_left is not None and job.lease_left < 0) or (
            live is not None and job.worker not in live
        )
        running.add_row(
            str(job.id)[:8],
            escape(job.kind),
            f"[bold red]lost {escape(job.worker or '?')}[/]" if lost else escape(job.worker or "?"),
            observe.span(job.runtime),
            escape(_progress(job.progress)),
        )
    failures = _table(("at", "l", None), ("job", "l", 8), ("kind", "l", 18), ("error", "l", 40))
    for failure in ledger.failures[:n_failures]:
        failures.add_row(
            failure.finished_at.astimezone().strftime("%H:%M:%S"),
            str(failure.id)[:8],
            escape(failure.kind),
            escape(failure.error.replace("\n", " ")),
        )
    parts: list[RenderableType] = [_header(taken)]
    problems = [problem for problem in (taken.redis_error, taken.workers_error) if problem]
    if problems:
        parts.append(Text(problems[0], style="yellow", no_wrap=True, overflow="ellipsis"))
    parts += [_title("queues", len(taken.queues), n_queues), queues]
    if ledger.limits:
        parts += [_title("busiest limited keys", len(ledger.limits), n_limits), _limits(taken, n_limits)]
    parts += [
        _title("running", len(ledger.running), n_running),
        running,
        _title("failed in the last hour", len(ledger.failures), n_failures),
        failures,
    ]
    return Group(*parts)


def _limits(taken: snapshot.Snapshot, shown: int) -> Table:
    """The busiest keys of the limits: running against the cap, waiting, oldest start, next start."""
    from rich.markup import escape

    from jobs.cli.limit_tables import key_cells, key_label

    table = _table(
        ("limit", "l", 16), ("key", "l", 16), ("run", "r", None), ("wait", "r", None), ("oldest", "r", None)
    )
    table.add_column("next", justify="right", no_wrap=True)
    for row, used in taken.ledger.limits[:shown]:
        running, waiting, oldest, following = key_cells(row, used, taken.ledger.now)
        table.add_row(escape(row.name), escape(key_label(row, used)), running, waiting, oldest, following)
    return table


def _title(name: str, total: int, shown: int) -> Text:
    from rich.text import Text

    more = f" ({total - shown} more)" if shown < total else ""
    return Text(f"{name}: {total}{more}", style="bold cyan", no_wrap=True)


class _Workers:
    """Asks the workers every few seconds in a thread; the frames read the latest answer."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.latest: tuple[list[fleet.Worker] | None, str | None] = (None, "asking the workers…")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jobs-top-workers", daemon=True)

    def _run(self) -> None:
        from jobs import snapshot

        while not self.stop.is_set():
            self.latest = snapshot.ask_workers(self.settings, self.timeout)
            self.stop.wait(WORKERS_EVERY)


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[int]:
    """Keys arrive one at a time, unechoed; Ctrl-C still interrupts. Restored on exit."""
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            key = os.read(fd, 32)
            if not key or b"q" in key.lower():
                return True
    return False


def _interactive(settings: Settings, interval: float, timeout: float) -> None:
    from rich.console import Console
    from rich.live import Live

    from jobs import snapshot

    known = worker_queues(settings)
    asker = _Workers(settings, timeout)
    asker.thread.start()
    screen = Console(highlight=False)
    try:
        with (
            _cbreak(sys.stdin) as fd,
            Live(console=screen, screen=True, auto_refresh=False, redirect_stderr=False) as live,
        ):
            while True:
                taken = snapshot.take(settings, known, timeout=timeout, workers=asker.latest)
                live.update(render(taken, screen.size.height), refresh=True)
                if _quit_pressed(fd, interval):
                    return
    except KeyboardInterrupt:
        return
    finally:
        asker.stop.set()


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (the default without a terminal).")
@click.option(
    "--interval", type=click.FloatRange(0.2), default=1.0, show_default=True, help="Seconds between frames."
)
@options.worker_timeout
@options.json_output("Print one snapshot as JSON and exit.")
def top(once: bool, interval: float, timeout: float, as_json: bool) -> None:
    """Live view: queues, running jobs, recent failures, leader and workers (q quits)."""
    from rich.console import Console

    from jobs import snapshot

    settings = context.settings()
    if as_json or once or not (sys.stdin.isatty() and sys.stdout.isatty()):
        taken = snapshot.take(settings, worker_queues(settings), timeout=timeout)
        if as_json:
            emit_json(taken.as_dict())
        else:
            Console(highlight=False, soft_wrap=False).print(render(taken, None))
        return
    _interactive(settings, interval, timeout)
