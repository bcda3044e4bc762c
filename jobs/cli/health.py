"""``jobs health ROLE``: the probe Docker and Kubernetes run inside each process's container.

One line of output; exit 0 when healthy, 1 when not (never 2: Docker reserves it).

- ``worker``: a worker node of this host (or the one named with ``--node``;
  for ``jobs worker -P batched -n NAME@HOST``, any of its processes) answers a
  Celery ping through the broker, so its main process is alive, consuming, and
  connected to Redis.
- ``beat``: PostgreSQL is reachable and some beat process holds the leader lock.
  A standby that does not lead is healthy: only one beat leads at a time, and
  restarting a standby would not help. When nobody leads, every beat reports
  unhealthy, because each one tries for the lock on every tick.
- ``flower``: Flower answers ``GET /healthcheck`` on its configured port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import sys
from typing import NoReturn

import click

from jobs.cli import context, options

__all__ = ["health"]

ROLES = ("worker", "beat", "flower")


def _report(healthy: bool, role: str, detail: str, as_json: bool = False) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"role": role, "healthy": healthy, "detail": detail}))
    else:
        click.echo(f"{role} {'healthy' if healthy else 'unhealthy'}: {detail}")
    sys.exit(0 if healthy else 1)


class _Answered(Exception):
    """Raised from the reply callback to stop waiting once the wanted node answered."""


def node_pattern(name: str) -> str:
    """The nodes of the worker started as ``jobs worker -n NAME@HOST``: the node itself, or with
    ``-P batched`` any of its worker processes (``NAME-I.XXXX@HOST``, jobs.batched_pool)."""
    from jobs.batched_pool import PROCESS_SUFFIX

    base, _, host = name.partition("@")
    return rf"^{re.escape(base)}({PROCESS_SUFFIX})?@{re.escape(host)}$"


def _worker(node: str | None, timeout: float) -> tuple[bool, str]:
    import socket

    from celery.utils.nodenames import host_format

    from jobs.app import get_app

    pattern = node_pattern(host_format(node)) if node else None
    suffix = f"@{socket.gethostname()}"
    answered: list[str] = []

    def on_reply(reply: dict[str, object]) -> None:
        answered.extend(
            found for found in reply if (re.match(pattern, found) if pattern else found.endswith(suffix))
        )
        if answered:
            raise _Answered

    app = get_app()
    with app.connection_for_write() as connection:
        # Bounded: the app itself retries the broker forever, a probe must not.
        connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))
        with contextlib.suppress(_Answered):
            app.control.ping(
                pattern=pattern,
                matcher="pcre" if pattern else None,
                timeout=timeout,
                connection=connection,
                callback=on_reply,
            )
    if answered:
        return True, f"{answered[0]} answered a ping"
    wanted = host_format(node) if node else f"no worker of this host (*{suffix})"
    return False, f"{wanted} did not answer a ping within {timeout:g}s"


def _beat(timeout: float) -> tuple[bool, str]:
    import socket

    import sqlalchemy as sa

    from jobs import db
    from jobs.leader import current_leader

    with db.transaction(context.settings()) as conn:
        conn.execute(sa.select(sa.func.set_config("statement_timeout", f"{int(timeout * 1000)}", True)))
        leader = current_leader(conn)
    if leader is None:
        return False, "PostgreSQL is reachable but no beat holds the leader lock"
    here = leader.split(":")[1:2] == [socket.gethostname()]
    where = "this host" if here else "another host; this one stands by"
    return True, f"leader is {leader} ({where})"


def _probe_host(address: str) -> str:
    """Where to reach a server bound to ``address``: through loopback when it binds every address."""
    try:
        ip = ipaddress.ip_address(address or "127.0.0.1")
    except ValueError:
        return address  # a host name
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _flower(timeout: float) -> tuple[bool, str]:
    import httpx

    settings = context.settings()
    url = f"http://{_probe_host(settings.flower_address)}:{settings.flower_port}/healthcheck"
    response = httpx.get(url, timeout=timeout)
    if response.status_code == 200 and response.text.strip() == "OK":
        return True, f"{url} answered OK"
    return False, f"{url} answered {response.status_code}"


@click.command()
@click.argument("role", type=click.Choice(ROLES))
@click.option(
    "--node",
    help="worker: the node name to ping, as given to jobs worker -n (%h is this host; -P batched:"
    " any of its processes); default: any worker of this host.",
)
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds.")
@options.json_output("Print JSON: role, healthy, detail.")
def health(role: str, node: str | None, timeout: float, as_json: bool) -> None:
    """Exit 0 if this host's ROLE (worker, beat or flower) is healthy, else 1; for container probes."""
    try:
        if role == "worker":
            healthy, detail = _worker(node, timeout)
        elif role == "beat":
            healthy, detail = _beat(timeout)
        else:
            healthy, detail = _flower(timeout)
    except Exception as error:  # any failure to check is "unhealthy", said in one line
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _report(False, role, f"{type(error).__name__}: {reason}", as_json)
    _report(healthy, role, detail, as_json)
