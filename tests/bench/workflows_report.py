"""Workflows' table: each figure against plain jobs of the same step (submit, drain) or the plain
submit-to-start latency of the same round. Phases: ``tests.bench.workflows``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tests.bench.report import Metric, Round, ratio_text, read, spread_text

__all__ = ["WORKFLOW_METRICS", "render_workflows"]

_PLAIN = "plain"
_WORKFLOW = "workflow"


def _none(round_: Round) -> float | None:
    """No baseline: the figure is shown alone."""
    return None


def _alone(key: str, label: str, unit: str, field: str, phase: str = "wf_drain") -> Metric:
    return Metric(
        key,
        label,
        unit,
        _none,
        read(phase, "platform", field),
        higher_is_better=False,
        baseline_label=_PLAIN,
        compared_label=_WORKFLOW,
    )


def _against_plain(key: str, label: str, unit: str, phase: str, base: str, field: str, **kw: Any) -> Metric:
    return Metric(
        key,
        label,
        unit,
        read(phase, "platform", base),
        read(phase, "platform", field),
        baseline_label=_PLAIN,
        compared_label=_WORKFLOW,
        **kw,
    )


def _submit(shape: str, label: str) -> tuple[Metric, ...]:
    return (
        _against_plain(
            f"wf_submit_{shape}",
            f"submit, {label} (vs submit_many of as many jobs)",
            "s",
            "wf_submit",
            "plain_seconds",
            f"{shape}_seconds",
            higher_is_better=False,
        ),
        _alone(
            f"wf_build_{shape}",
            "  building the Workflow in Python (not in the above)",
            "s",
            f"{shape}_build_seconds",
            "wf_submit",
        ),
    )


def _drain(shape: str, label: str) -> tuple[Metric, ...]:
    rows = [
        _against_plain(
            f"wf_drain_{shape}",
            f"drain, {label} (vs plain jobs)",
            "jobs/s",
            "wf_drain",
            "plain_rate",
            f"{shape}_rate",
        ),
        _against_plain(
            f"wf_drain_{shape}_cpu",
            "  CPU per job, worker + its PostgreSQL backends",
            "ms",
            "wf_drain",
            "plain_cpu_ms_per_job",
            f"{shape}_cpu_ms_per_job",
            higher_is_better=False,
        ),
    ]
    if shape != "group":
        rows += [
            _alone(
                f"wf_edge_{shape}_plain",
                "  extra wall time per edge (vs plain jobs)",
                "ms",
                f"{shape}_ms_per_edge_vs_plain",
            ),
            _alone(
                f"wf_edge_{shape}_group",
                "  extra wall time per edge (vs the group)",
                "ms",
                f"{shape}_ms_per_edge_vs_group",
            ),
            _alone(
                f"wf_edge_{shape}_cpu",
                "  extra CPU per edge (vs the group)",
                "ms",
                f"{shape}_cpu_ms_per_edge_vs_group",
            ),
        ]
    return tuple(rows)


def _latency(shape: str, label: str) -> tuple[Metric, ...]:
    return tuple(
        Metric(
            f"wf_release_{shape}_{pct}",
            f"release latency, {label}, {pct} (vs submit-to-start {pct})",
            "ms",
            read("latency", "platform", f"{pct}_ms"),
            read("wf_latency", "platform", f"{shape}_{pct}_ms"),
            higher_is_better=False,
            baseline_label=_PLAIN,
            compared_label=_WORKFLOW,
        )
        for pct in ("p50", "p99")
    )


WORKFLOW_METRICS = (
    *_submit("fanout", "fan-out: a root and N steps after it"),
    *_submit("fanin", "fan-in: N steps, then one after all"),
    _alone(
        "wf_fanout_release",
        "fan-out's release: the root's finish, N children published",
        "s",
        "fanout_release_seconds",
        "wf_submit",
    ),
    *_drain("group", "a group (no edge)"),
    *_drain("chains", "chains side by side (one edge per step)"),
    *_drain("layers", "layers (--wf-parents edges per step)"),
    *_latency("chain", "two-step chain"),
    *_latency("fanin", "fan-in (--wf-fanin parents)"),
)


def render_workflows(console: Console, rows: list[dict[str, Any]], rounds: int) -> None:
    """The workflows rows (``WORKFLOW_METRICS`` summarized), if any of its phases ran."""
    if not rows:
        return
    table = Table(title=f"workflows on the platform: medians (min-max) of {rounds} round(s)")
    for column, justify in (
        ("metric", "left"),
        ("unit", "left"),
        ("plain jobs", "right"),
        ("workflow", "right"),
        ("ratio", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]  # rich's literal
    for row in rows:
        digits = 2 if row["unit"] in ("ms", "s") else 0
        table.add_row(
            row["label"],
            row["unit"],
            spread_text(row[row["baseline"]], digits),
            spread_text(row[row["compared"]], digits),
            ratio_text(row["ratio"]),
        )
    console.print(table)
