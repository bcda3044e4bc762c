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


# Each row: key, label, unit, the baseline's (phase, field), the compared figure's (system, phase,
# field), the name of its target (``_against``'s ``targets``), and whether higher is better.
_ROWS: tuple[tuple[str, str, str, tuple[str, str], tuple[str, str, str], str, bool], ...] = (
    ("single_submit", "single submit (submit vs apply_async loop)", "jobs/s",
     ("single", "rate"), ("platform", "single", "rate"), "single", True),
    ("single_submit_cpu", "  producer CPU per submitted job (single)", "ms",
     ("single", "client_cpu_ms_per_job"), ("platform", "single", "client_cpu_ms_per_job"), "", False),
    ("bulk_submit", "bulk submit (submit_many vs apply_async loop)", "jobs/s",
     ("single", "rate"), ("platform", "bulk", "rate"), "bulk", True),
    ("bulk_submit_cli", "bulk submit (jobs submit --from-file, incl. start-up)", "jobs/s",
     ("single", "rate"), ("platform", "bulk_cli", "rate"), "bulk", True),
    ("drain", "end-to-end drain (first taken to last acked)", "jobs/s",
     ("drain", "rate"), ("platform", "drain", "rate"), "drain", True),
    ("drain_cpu", "  worker CPU per job (main process + pool, drain)", "ms",
     ("drain", "worker_cpu_ms_per_job"), ("platform", "drain", "worker_cpu_ms_per_job"), "", False),
    ("drain_database_cpu", "  PostgreSQL CPU per job (the worker's backends, drain)", "ms",
     ("drain", "database_cpu_ms_per_job"), ("platform", "drain", "database_cpu_ms_per_job"), "", False),
    ("drain_ledger", "  drain by ledger timestamps (first start to last finish)", "jobs/s",
     ("drain", "rate"), ("platform", "drain", "ledger_rate"), "", True),
    ("drain_celery_db", "  drain, Celery + database result backend (reference)", "jobs/s",
     ("drain", "rate"), ("celery-db", "drain", "rate"), "", True),
    ("drain_io", "I/O-bound drain (each job waits, threads pool)", "jobs/s",
     ("drain_io", "rate"), ("platform", "drain_io", "rate"), "", True),
    ("drain_io_cpu", "  worker CPU per job (I/O-bound drain)", "ms",
     ("drain_io", "worker_cpu_ms_per_job"), ("platform", "drain_io", "worker_cpu_ms_per_job"), "", False),
    ("fill", "  queue fill before the drain (apply_async loop vs submit_many)", "jobs/s",
     ("drain", "fill_rate"), ("platform", "drain", "fill_rate"), "", True),
    ("latency_p50", "submit-to-start latency p50", "ms",
     ("latency", "p50_ms"), ("platform", "latency", "p50_ms"), "latency", False),
    ("latency_p99", "submit-to-start latency p99", "ms",
     ("latency", "p99_ms"), ("platform", "latency", "p99_ms"), "", False),
    ("peak_rss", "worker peak RSS, process tree (during the drain)", "MiB",
     ("drain", "peak_rss_mib"), ("platform", "drain", "peak_rss_mib"), "rss", False),
    ("peak_pss", "  worker peak PSS (shared pages split)", "MiB",
     ("drain", "peak_pss_mib"), ("platform", "drain", "peak_pss_mib"), "", False),
)  # fmt: skip


def _against(baseline: str, short: str, targets: dict[str, float]) -> tuple[Metric, ...]:
    """The platform's figures as ratios to one bare Celery ``baseline`` (``short`` names it in labels)."""
    suffix = "_vs_defaults" if short else ""
    return tuple(
        Metric(
            key + suffix,
            label + short,
            unit,
            read(base_phase, baseline, base_field),
            read(phase, system, field),
            target=targets.get(target) if target else None,
            higher_is_better=higher,
            compared_label=system,
            baseline_label=baseline,
        )
        for key, label, unit, (base_phase, base_field), (system, phase, field), target, higher in _ROWS
    )


def _profile(system: str, flag: str) -> tuple[Metric, ...]:
    """One batched profile of ``jobs worker``: drain, CPU, latency and RSS, against Celery's defaults."""
    return tuple(
        Metric(
            key,
            label,
            unit,
            read(phase, "celery-defaults", field),
            read(phase, system, field),
            target=target,
            higher_is_better=higher,
            compared_label=system,
            baseline_label="celery-defaults",
        )
        for key, label, unit, phase, field, target, higher in (
            (
                f"drain_{system}",
                f"drain, jobs worker {flag}" + DEFAULTS,
                "jobs/s",
                "drain",
                "rate",
                1.5,
                True,
            ),
            (
                f"drain_{system}_cpu",
                f"  worker CPU per job ({flag}, drain)",
                "ms",
                "drain",
                "worker_cpu_ms_per_job",
                None,
                False,
            ),
            (
                f"drain_{system}_database_cpu",
                f"  PostgreSQL CPU per job ({flag}, drain)",
                "ms",
                "drain",
                "database_cpu_ms_per_job",
                None,
                False,
            ),
            (
                f"latency_{system}_p50",
                f"  submit-to-start latency p50 ({flag})",
                "ms",
                "latency",
                "p50_ms",
                None,
                False,
            ),
            (
                f"peak_rss_{system}",
                f"  worker peak RSS, process tree ({flag})",
                "MiB",
                "drain",
                "peak_rss_mib",
                None,
                False,
            ),
        )
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
    *_profile("batched", "-P batched"),
    *_profile("pooled", "--batches"),
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
