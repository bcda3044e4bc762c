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


def _key(short: str) -> str:
    return "_vs_defaults" if short else ""


def _against(baseline: str, short: str, targets: dict[str, float]) -> tuple[Metric, ...]:
    """The platform's figures as ratios to one bare Celery ``baseline`` (``short`` names it in labels)."""
    return (
        Metric(
            f"single_submit{_key(short)}",
            f"single submit (submit vs apply_async loop){short}",
            "jobs/s",
            read("single", baseline, "rate"),
            read("single", "platform", "rate"),
            target=targets.get("single"),
            baseline_label=baseline,
        ),
        Metric(
            f"single_submit_cpu{_key(short)}",
            f"  producer CPU per submitted job (single){short}",
            "ms",
            read("single", baseline, "client_cpu_ms_per_job"),
            read("single", "platform", "client_cpu_ms_per_job"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"bulk_submit{_key(short)}",
            f"bulk submit (submit_many vs apply_async loop){short}",
            "jobs/s",
            read("single", baseline, "rate"),
            read("bulk", "platform", "rate"),
            target=targets.get("bulk"),
            baseline_label=baseline,
        ),
        Metric(
            f"bulk_submit_cli{_key(short)}",
            f"bulk submit (jobs submit --from-file, incl. start-up){short}",
            "jobs/s",
            read("single", baseline, "rate"),
            read("bulk_cli", "platform", "rate"),
            target=targets.get("bulk"),
            baseline_label=baseline,
        ),
        Metric(
            f"drain{_key(short)}",
            f"end-to-end drain (first taken to last acked){short}",
            "jobs/s",
            read("drain", baseline, "rate"),
            read("drain", "platform", "rate"),
            target=targets.get("drain"),
            baseline_label=baseline,
        ),
        Metric(
            f"drain_cpu{_key(short)}",
            f"  worker CPU per job (main process + pool, drain){short}",
            "ms",
            read("drain", baseline, "worker_cpu_ms_per_job"),
            read("drain", "platform", "worker_cpu_ms_per_job"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"drain_database_cpu{_key(short)}",
            f"  PostgreSQL CPU per job (the worker's backends, drain){short}",
            "ms",
            read("drain", baseline, "database_cpu_ms_per_job"),
            read("drain", "platform", "database_cpu_ms_per_job"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"drain_ledger{_key(short)}",
            f"  drain by ledger timestamps (first start to last finish){short}",
            "jobs/s",
            read("drain", baseline, "rate"),
            read("drain", "platform", "ledger_rate"),
            baseline_label=baseline,
        ),
        Metric(
            f"drain_celery_db{_key(short)}",
            f"  drain, Celery + database result backend (reference){short}",
            "jobs/s",
            read("drain", baseline, "rate"),
            read("drain", "celery-db", "rate"),
            compared_label="celery-db",
            baseline_label=baseline,
        ),
        Metric(
            f"drain_io{_key(short)}",
            f"I/O-bound drain (each job waits, threads pool){short}",
            "jobs/s",
            read("drain_io", baseline, "rate"),
            read("drain_io", "platform", "rate"),
            baseline_label=baseline,
        ),
        Metric(
            f"drain_io_cpu{_key(short)}",
            f"  worker CPU per job (I/O-bound drain){short}",
            "ms",
            read("drain_io", baseline, "worker_cpu_ms_per_job"),
            read("drain_io", "platform", "worker_cpu_ms_per_job"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"fill{_key(short)}",
            f"  queue fill before the drain (apply_async loop vs submit_many){short}",
            "jobs/s",
            read("drain", baseline, "fill_rate"),
            read("drain", "platform", "fill_rate"),
            baseline_label=baseline,
        ),
        Metric(
            f"latency_p50{_key(short)}",
            f"submit-to-start latency p50{short}",
            "ms",
            read("latency", baseline, "p50_ms"),
            read("latency", "platform", "p50_ms"),
            target=targets.get("latency"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"latency_p99{_key(short)}",
            f"submit-to-start latency p99{short}",
            "ms",
            read("latency", baseline, "p99_ms"),
            read("latency", "platform", "p99_ms"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"peak_rss{_key(short)}",
            f"worker peak RSS, process tree (during the drain){short}",
            "MiB",
            read("drain", baseline, "peak_rss_mib"),
            read("drain", "platform", "peak_rss_mib"),
            target=targets.get("rss"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
        Metric(
            f"peak_pss{_key(short)}",
            f"  worker peak PSS (shared pages split){short}",
            "MiB",
            read("drain", baseline, "peak_pss_mib"),
            read("drain", "platform", "peak_pss_mib"),
            higher_is_better=False,
            baseline_label=baseline,
        ),
    )


# Against Celery as users run it (its defaults: early acks, prefetch 4, no events, WARNING logs),
# then against Celery given the platform's own settings (late acks, prefetch 1, events, INFO).
DEFAULTS = " · vs Celery defaults"
METRICS = (
    *_against(
        "celery-defaults", DEFAULTS, {"single": 0.8, "bulk": 25.0, "drain": 1.0, "latency": 1.2, "rss": 1.2}
    ),
    Metric(
        "celery_settings",
        "  drain, bare Celery with the platform's settings · vs Celery defaults",
        "jobs/s",
        read("drain", "celery-defaults", "rate"),
        read("drain", "celery", "rate"),
        compared_label="celery",
        baseline_label="celery-defaults",
    ),
    *_against("celery", "", {"single": 0.8, "bulk": 25.0, "drain": 0.9, "latency": 1.2, "rss": 1.2}),
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
        title=(
            f"the platform vs bare Celery (its defaults, then the platform's settings): medians (min-max)"
            f" of {rounds} round(s)"
        ),
        caption=(
            f"{machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
            f"Celery {machine['celery']}, Redis {machine['redis_server']}, "
            f"PostgreSQL {machine['postgresql'].split()[0]} "
            f"(synchronous_commit={machine['postgresql_settings']['synchronous_commit']})"
        ),
    )
    table.add_column("metric")
    table.add_column("unit")
    table.add_column("baseline", justify="right")
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
