"""The benchmark's summary: per metric, median and min-max over rounds, each platform figure as a ratio."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["METRICS", "Metric", "ratio_text", "read", "render", "render_backlog", "spread_text", "summarize"]

Round = dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Metric:
    """One row: how to read the baseline and the compared figure from a round, and the target ratio."""

    key: str
    label: str
    unit: str
    baseline: Callable[[Round], float | None]
    compared: Callable[[Round], float | None]
    target: float | None = None
    higher_is_better: bool = True
    compared_label: str = "platform"
    baseline_label: str = "celery"


def read(phase: str, system: str, field: str) -> Callable[[Round], float | None]:
    """How to read one figure of a round (``None`` when the phase did not run or failed)."""

    def figure(round_: Round) -> float | None:
        value = round_.get(phase, {}).get(system, {}).get(field)
        return None if value is None else float(value)

    return figure


METRICS = (
    Metric(
        "single_submit",
        "single submit (submit vs apply_async loop)",
        "jobs/s",
        read("single", "celery", "rate"),
        read("single", "platform", "rate"),
        target=0.8,
    ),
    Metric(
        "single_submit_cpu",
        "  producer CPU per submitted job (single)",
        "ms",
        read("single", "celery", "client_cpu_ms_per_job"),
        read("single", "platform", "client_cpu_ms_per_job"),
        higher_is_better=False,
    ),
    Metric(
        "bulk_submit",
        "bulk submit (submit_many vs apply_async loop)",
        "jobs/s",
        read("single", "celery", "rate"),
        read("bulk", "platform", "rate"),
        target=25.0,
    ),
    Metric(
        "bulk_submit_cli",
        "bulk submit (jobs submit --from-file, incl. start-up)",
        "jobs/s",
        read("single", "celery", "rate"),
        read("bulk_cli", "platform", "rate"),
        target=25.0,
    ),
    Metric(
        "drain",
        "end-to-end drain (first taken to last acked)",
        "jobs/s",
        read("drain", "celery", "rate"),
        read("drain", "platform", "rate"),
        target=0.9,
    ),
    Metric(
        "drain_cpu",
        "  worker CPU per job (main process + pool, drain)",
        "ms",
        read("drain", "celery", "worker_cpu_ms_per_job"),
        read("drain", "platform", "worker_cpu_ms_per_job"),
        higher_is_better=False,
    ),
    Metric(
        "drain_database_cpu",
        "  PostgreSQL CPU per job (the worker's backends, drain)",
        "ms",
        read("drain", "celery", "database_cpu_ms_per_job"),
        read("drain", "platform", "database_cpu_ms_per_job"),
        higher_is_better=False,
    ),
    Metric(
        "drain_ledger",
        "  drain by ledger timestamps (first start to last finish)",
        "jobs/s",
        read("drain", "celery", "rate"),
        read("drain", "platform", "ledger_rate"),
    ),
    Metric(
        "drain_celery_db",
        "  drain, Celery + database result backend (reference)",
        "jobs/s",
        read("drain", "celery", "rate"),
        read("drain", "celery-db", "rate"),
        compared_label="celery-db",
    ),
    Metric(
        "fill",
        "  queue fill before the drain (apply_async loop vs submit_many)",
        "jobs/s",
        read("drain", "celery", "fill_rate"),
        read("drain", "platform", "fill_rate"),
    ),
    Metric(
        "latency_p50",
        "submit-to-start latency p50",
        "ms",
        read("latency", "celery", "p50_ms"),
        read("latency", "platform", "p50_ms"),
        target=1.2,
        higher_is_better=False,
    ),
    Metric(
        "latency_p99",
        "submit-to-start latency p99",
        "ms",
        read("latency", "celery", "p99_ms"),
        read("latency", "platform", "p99_ms"),
        higher_is_better=False,
    ),
    Metric(
        "peak_rss",
        "worker peak RSS, process tree (during the drain)",
        "MiB",
        read("drain", "celery", "peak_rss_mib"),
        read("drain", "platform", "peak_rss_mib"),
        target=1.2,
        higher_is_better=False,
    ),
    Metric(
        "peak_pss",
        "  worker peak PSS (shared pages split)",
        "MiB",
        read("drain", "celery", "peak_pss_mib"),
        read("drain", "platform", "peak_pss_mib"),
        higher_is_better=False,
    ),
)


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rounds: list[Round], metrics: tuple[Metric, ...] = METRICS) -> list[dict[str, Any]]:
    """Median and min-max of each figure, and of each round's ratio, for every metric with data."""
    rows = []
    for metric in metrics:
        base, comp, ratios = [], [], []
        for round_ in rounds:
            b, c = metric.baseline(round_), metric.compared(round_)
            if b is not None:
                base.append(b)
            if c is not None:
                comp.append(c)
            if b and c is not None:
                ratios.append(c / b)
        if not comp:
            continue
        ratio = _spread(ratios)
        met = None
        if metric.target is not None and ratio is not None:
            met = (
                ratio["median"] >= metric.target
                if metric.higher_is_better
                else ratio["median"] <= metric.target
            )
        rows.append(
            {
                "metric": metric.key,
                "label": metric.label,
                "unit": metric.unit,
                "compared": metric.compared_label,
                "baseline": metric.baseline_label,
                metric.baseline_label: _spread(base),
                metric.compared_label: _spread(comp),
                "ratio": ratio,
                "target": None
                if metric.target is None
                else f"{'>=' if metric.higher_is_better else '<='} {metric.target:g}x",
                "met": met,
            }
        )
    return rows


def spread_text(spread: dict[str, float] | None, digits: int = 0) -> str:
    if spread is None:
        return "-"
    med, lo, hi = spread["median"], spread["min"], spread["max"]
    if spread["n"] == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def ratio_text(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    if spread["n"] == 1:
        return f"{spread['median']:.2f}x"
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"


def render(console: Console, rows: list[dict[str, Any]], machine: dict[str, Any], rounds: int) -> None:
    table = Table(
        title=f"bare Celery vs the platform: medians (min-max) of {rounds} round(s)",
        caption=(
            f"{machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
            f"Celery {machine['celery']}, Redis {machine['redis_server']}, "
            f"PostgreSQL {machine['postgresql'].split()[0]} "
            f"(synchronous_commit={machine['postgresql_settings']['synchronous_commit']})"
        ),
    )
    table.add_column("metric")
    table.add_column("unit")
    table.add_column("bare Celery", justify="right")
    table.add_column("compared", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    for row in rows:
        digits = 2 if row["unit"] == "ms" else 1 if row["unit"] == "MiB" else 0
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row["met"]]
        table.add_row(
            row["label"],
            row["unit"],
            spread_text(row[row["baseline"]], digits),
            spread_text(row[row["compared"]], digits),
            ratio_text(row["ratio"]),
            row["target"] or "",
            met,
        )
    console.print(table)


def render_backlog(console: Console, rounds: list[Round]) -> None:
    """The backlog phase: per-job claim + finish time (in-process) against each ledger size."""
    found = [
        r["backlog"]["platform"]
        for r in rounds
        if "error" not in r.get("backlog", {}).get("platform", {"error": 1})
    ]
    if not found:
        return
    table = Table(
        title="claim + body + finish in one process, by queued jobs in the ledger (median of rounds)"
    )
    for column in ("queued jobs", "ms per job (median)", "ms per job (p90)", "claim plan", "finish plan"):
        table.add_column(column)
    for size in found[0]:
        if not isinstance(found[0][size], dict):
            continue
        rows = [f[size] for f in found]
        table.add_row(
            f"{int(size):,}",
            f"{statistics.median(r['median_ms_per_job'] for r in rows):.2f}",
            f"{statistics.median(r['p90_ms_per_job'] for r in rows):.2f}",
            rows[0]["claim_plan"],
            rows[0]["finish_plan"],
        )
    console.print(table)
