"""Flow control's table: each figure against the platform's own figure without a limit (and the
capped drain against bare Celery too), from the same round. Phases: ``tests.bench.flow``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tests.bench.report import Metric, Round, ratio_text, read, spread_text

__all__ = ["FLOW_METRICS", "render_flow"]

_CAPPED = "capped"
_LIMITED = "limited"


def _none(round_: Round) -> float | None:
    """No baseline: the figure is shown alone."""
    return None


def _slot(cap: int) -> tuple[Metric, ...]:
    label = f"slot freed to next start, cap {cap}"
    return (
        Metric(
            f"slot_latency_cap{cap}_p50",
            f"{label}, p50 (vs submit-to-start p50)",
            "ms",
            read("latency", "platform", "p50_ms"),
            read("slot_latency", "platform", f"cap{cap}_p50_ms"),
            higher_is_better=False,
            baseline_label="platform",
            compared_label=_LIMITED,
        ),
        Metric(
            f"slot_latency_cap{cap}_p99",
            f"{label}, p99 (vs submit-to-start p99)",
            "ms",
            read("latency", "platform", "p99_ms"),
            read("slot_latency", "platform", f"cap{cap}_p99_ms"),
            higher_is_better=False,
            baseline_label="platform",
            compared_label=_LIMITED,
        ),
        Metric(
            f"slot_latency_cap{cap}_first",
            "  p50 over the first quarter of the batch (most still held)",
            "ms",
            _none,
            read("slot_latency", "platform", f"cap{cap}_first_quarter_p50_ms"),
            higher_is_better=False,
            baseline_label="platform",
            compared_label=_LIMITED,
        ),
        Metric(
            f"slot_latency_cap{cap}_last",
            "  p50 over the last quarter (few still held)",
            "ms",
            _none,
            read("slot_latency", "platform", f"cap{cap}_last_quarter_p50_ms"),
            higher_is_better=False,
            baseline_label="platform",
            compared_label=_LIMITED,
        ),
        Metric(
            f"slot_rate_cap{cap}",
            f"  jobs/s through cap {cap} (body --slot-body-ms)",
            "jobs/s",
            _none,
            read("slot_latency", "platform", f"cap{cap}_rate"),
            baseline_label="platform",
            compared_label=_LIMITED,
        ),
    )


FLOW_METRICS = (
    Metric(
        "drain_capped",
        "drain, ping under a cap never reached (vs unlimited)",
        "jobs/s",
        read("drain", "platform", "rate"),
        read("drain_capped", "platform", "rate"),
        baseline_label="platform",
        compared_label=_CAPPED,
    ),
    Metric(
        "drain_capped_celery",
        "  the same capped drain vs bare Celery's drain",
        "jobs/s",
        read("drain", "celery", "rate"),
        read("drain_capped", "platform", "rate"),
        compared_label=_CAPPED,
    ),
    Metric(
        "drain_capped_cpu",
        "  worker CPU per job (capped vs unlimited)",
        "ms",
        read("drain", "platform", "worker_cpu_ms_per_job"),
        read("drain_capped", "platform", "worker_cpu_ms_per_job"),
        higher_is_better=False,
        baseline_label="platform",
        compared_label=_CAPPED,
    ),
    Metric(
        "drain_capped_database_cpu",
        "  PostgreSQL CPU per job (capped vs unlimited)",
        "ms",
        read("drain", "platform", "database_cpu_ms_per_job"),
        read("drain_capped", "platform", "database_cpu_ms_per_job"),
        higher_is_better=False,
        baseline_label="platform",
        compared_label=_CAPPED,
    ),
    *_slot(1),
    *_slot(2),
)


def render_flow(console: Console, rows: list[dict[str, Any]], rounds: int) -> None:
    """The flow control rows (``FLOW_METRICS`` summarized), if any of its phases ran."""
    if not rows:
        return
    table = Table(title=f"flow control on the platform: medians (min-max) of {rounds} round(s)")
    for column, justify in (
        ("metric", "left"),
        ("unit", "left"),
        ("against", "left"),
        ("baseline", "right"),
        ("with a limit", "right"),
        ("ratio", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]  # rich's literal
    for row in rows:
        digits = 2 if row["unit"] == "ms" else 0
        against = "bare Celery" if row["baseline"] == "celery" else "no limit"
        table.add_row(
            row["label"],
            row["unit"],
            against if row[row["baseline"]] is not None else "",
            spread_text(row[row["baseline"]], digits),
            spread_text(row[row["compared"]], digits),
            ratio_text(row["ratio"]),
        )
    console.print(table)
