"""``jobs metrics``: a Prometheus exporter for the ledger (jobs by state and queue, throughput, leader)."""

from __future__ import annotations

import signal
import threading

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json

__all__ = ["metrics"]


@click.command()
@click.option("--address", help="Address to bind (default: JOBS_METRICS_ADDRESS, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port (default: JOBS_METRICS_PORT, 9808; 0 picks one)."
)
@click.option("--once", is_flag=True, help="Print the metrics once in Prometheus's text format and exit.")
@options.json_output("With --once: print the samples as JSON.")
def metrics(address: str | None, port: int | None, once: bool, as_json: bool) -> None:
    """Serve the ledger's metrics on http://ADDRESS:PORT/metrics until stopped (SIGTERM or Ctrl-C)."""
    # Imported here, not at the top: completing a command line loads none of them.
    from prometheus_client import generate_latest

    from jobs import metrics as ledger_metrics
    from jobs.cli.output import err

    settings = context.settings()
    if once or as_json:
        registry = ledger_metrics.registry(settings)
        if as_json:
            emit_json(
                [
                    {"name": sample.name, "labels": sample.labels, "value": sample.value}
                    for family in registry.collect()
                    for sample in family.samples
                ]
            )
        else:
            click.echo(generate_latest(registry).decode(), nl=False)
        return
    host = address or settings.metrics_address
    server = ledger_metrics.serve(settings, host, settings.metrics_port if port is None else port)
    bound = server.server_address[1]
    err.print(f"serving the ledger's metrics on http://{host}:{bound}/metrics", markup=False, highlight=False)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.shutdown()
