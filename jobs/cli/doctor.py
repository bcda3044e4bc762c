"""``jobs doctor``: is this platform able to run jobs? One check per line, each with what to do.

A check passes (ok), fails (fail: the platform cannot do its work, or loses
guarantees), warns (warn: could not tell, or works but needs a look) or is
skipped (skip: it depends on a check that failed, or on something not
configured). ``jobs doctor`` exits 0 only when no check fails.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import click

from jobs.cli import context, health, options
from jobs.cli.output import emit_json, first_line
from jobs.errors import InfrastructureError, JobsError

# Each check imports what it needs: completing a command line loads none of it.
if TYPE_CHECKING:
    from jobs import fleet
    from jobs.settings import Settings

__all__ = ["Check", "doctor", "run"]

Status = Literal["ok", "fail", "warn", "skip"]


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: what was found, and what to do when it is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Doctor:
    settings: Settings
    timeout: float
    checks: list[Check] = dataclasses.field(default_factory=list)
    queues_with_jobs: dict[str, int] = dataclasses.field(default_factory=dict)
    kinds_waiting: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    paused: set[str] = dataclasses.field(default_factory=set)
    ledger_ok: bool = False
    found: list[fleet.Worker] | None = None

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> bool:
        self.checks.append(Check(name, status, detail, fix))
        return status != "fail"

    def postgres(self) -> bool:
        import sqlalchemy as sa

        from jobs import db

        url = db.safe_url(self.settings.database_url)
        try:
            with db.transaction(self.settings) as conn:
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(self.timeout * 1000)}"))
                version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        except (JobsError, sa.exc.SQLAlchemyError) as error:
            return self.add(
                "postgresql", "fail", first_line(error), "start PostgreSQL or fix JOBS_DATABASE_URL"
            )
        return self.add("postgresql", "ok", f"reachable at {url} (server {version})")

    def migrations(self) -> bool:
        import sqlalchemy as sa

        from jobs import migrate

        head = migrate.head()
        try:
            current = migrate.current(self.settings)
        except (JobsError, sa.exc.SQLAlchemyError) as error:
            return self.add("migrations", "fail", first_line(error), "run `jobs db upgrade`")
        if current != head:
            return self.add(
                "migrations",
                "fail",
                f"the ledger is at revision {current or 'none'}, the code needs {head}",
                "run `jobs db upgrade`",
            )
        return self.add("migrations", "ok", f"the ledger is at the newest revision ({head})")

    def autovacuum(self) -> None:
        """Every claim and finish leaves a dead row version: without autovacuum the ledger bloats."""
        import sqlalchemy as sa

        from jobs import db

        with db.transaction(self.settings) as conn:
            enabled = conn.execute(sa.text("SHOW autovacuum")).scalar_one()
        if enabled == "on":
            self.add("autovacuum", "ok", "on (the ledger's tables are vacuumed at 1 % dead rows)")
        else:
            self.add(
                "autovacuum",
                "warn",
                "off on this server: dead row versions of finished jobs pile up and claims slow down",
                "set `autovacuum = on`, or run `VACUUM ANALYZE jobs, job_attempts` regularly",
            )

    def ledger_facts(self) -> str | None:
        from jobs import db, observe, pauses
        from jobs.leader import current_leader

        with db.transaction(self.settings) as conn:
            stats = observe.queue_stats(conn)
            self.kinds_waiting = observe.queued_by_kind(conn)
            self.paused = set(pauses.paused(conn))
            leader = current_leader(conn)
        self.queues_with_jobs = {name: q.queued for name, q in stats.items() if q.queued}
        return leader

    def leader(self, leader: str | None) -> None:
        if leader is None:
            self.add(
                "leader",
                "fail",
                "no beat process holds the leader lock: delayed and retrying jobs are not published, "
                "lost workers' jobs are not rescued",
                "start `jobs beat`",
            )
        else:
            self.add("leader", "ok", f"{leader} leads")

    def redis(self) -> bool:
        from jobs import broker

        try:
            found = broker.config(self.settings, timeout=self.timeout)
        except InfrastructureError as error:
            self.add("redis", "fail", error.message, "start Redis or fix JOBS_BROKER_URL")
            return False
        self.add("redis", "ok", "reachable")
        if found.persistent is None:
            self.add(
                "redis persistence",
                "warn",
                "unknown: Redis refused CONFIG GET (managed Redis?)",
                "make sure the service persists data (AOF or snapshots)",
            )
        elif not found.persistent:
            self.add(
                "redis persistence",
                "warn",
                "off (save '' and appendonly no): a restart empties the queues; the leader publishes "
                "the ledger's queued jobs again within a tick, and running jobs' messages come back twice",
                "set `appendonly yes` (or a save schedule) in redis.conf",
            )
        else:
            self.add("redis persistence", "ok", f"appendonly {found.appendonly}, save {found.save!r}")
        if found.maxmemory_policy is None:
            self.add(
                "redis eviction",
                "warn",
                "unknown: Redis refused CONFIG GET (managed Redis?)",
                "make sure maxmemory-policy is noeviction",
            )
        elif found.maxmemory_policy != "noeviction":
            self.add(
                "redis eviction",
                "fail",
                f"maxmemory-policy is {found.maxmemory_policy}: Redis may drop queued messages when full",
                "set `maxmemory-policy noeviction`",
            )
        else:
            self.add("redis eviction", "ok", "maxmemory-policy noeviction")
        return True

    def workers(self) -> None:
        from jobs import fleet

        try:
            found = fleet.workers(self.settings, timeout=self.timeout)
        except InfrastructureError as error:
            self.add("workers", "fail", error.message, "check Redis")
            return
        self.found = found
        live = [worker for worker in found if worker.live]
        silent = [worker.name for worker in found if worker.state == "silent"]
        consuming = fleet.consumers(found)
        orphans = {queue: count for queue, count in self.queues_with_jobs.items() if not consuming.get(queue)}
        paused_waiting = sorted(queue for queue in self.queues_with_jobs if queue in self.paused)
        answered = f"{len(live)} live worker(s)" + (
            f", {len(silent)} silent ({', '.join(silent)})" if silent else ""
        )
        if orphans:
            listed = ", ".join(f"{queue} ({count} queued)" for queue, count in sorted(orphans.items()))
            self.add(
                "workers",
                "fail",
                f"no live worker consumes {listed}; {answered}",
                "start `jobs worker -Q " + ",".join(sorted(orphans)) + "`",
            )
        elif not self.ledger_ok:
            self.add(
                "workers",
                "warn",
                f"{answered}; which queues need one is unknown without the ledger",
                "fix the ledger first",
            )
        elif not live:
            self.add("workers", "warn", "no live worker (no queued jobs need one now)", "start `jobs worker`")
        else:
            self.add("workers", "ok", f"{answered}; every queue with queued jobs has a consumer")
        if paused_waiting:
            self.add(
                "paused queues",
                "warn",
                "jobs wait in paused queue(s) " + ", ".join(paused_waiting),
                "`jobs queue resume NAME` when ready",
            )
        if any(worker.state == "alive" for worker in found):  # the roster knows what the fleet implements
            self.kinds(found)

    def kinds(self, found: list[fleet.Worker]) -> None:
        """Queued jobs that no live worker can run, and kinds the fleet runs at several versions."""
        from jobs import fleet

        consuming = fleet.consumers(found)
        stranded = {
            (kind, queue): count
            for (kind, queue), count in self.kinds_waiting.items()
            if consuming.get(queue) and not fleet.implementers(found, kind, queue)
        }
        if stranded:
            listed = "; ".join(
                f"{count} job(s) of kind {kind} on queue {queue}"
                for (kind, queue), count in sorted(stranded.items())
            )
            kinds = ", ".join(sorted({kind for kind, _ in stranded}))
            self.add(
                "kinds",
                "fail",
                f"no live worker implements kind {kinds}: {listed} wait (no attempt is spent)",
                "deploy workers that implement them (JOBS_KIND_MODULES) on those queues, or `jobs cancel`",
            )
        versions: dict[str, set[str]] = {}
        for worker in found:
            if worker.live:
                for kind, version in worker.kinds.items():
                    versions.setdefault(kind, set()).add(version)
        mixed = {kind: found_versions for kind, found_versions in versions.items() if len(found_versions) > 1}
        if mixed:
            self.add(
                "kind versions",
                "warn",
                "live workers run "
                + "; ".join(
                    f"{kind} at {len(v)} versions ({', '.join(sorted(v))})"
                    for kind, v in sorted(mixed.items())
                ),
                "expected during a rolling deploy; else redeploy the old workers (`jobs workers --json`)",
            )
        if not stranded and not mixed:
            self.add(
                "kinds",
                "ok",
                f"every queued job's kind has a live worker ({len(versions)} kind(s) in the fleet)",
            )

    def broker_queues(self) -> None:
        """Queues in Redis that hold messages no worker of the platform takes, and the quarantine."""
        from jobs import broker, fleet

        found = self.found
        try:
            client = broker.client(self.settings, self.timeout)
            names = broker.queue_names(client)
            depths = broker.ready_messages(client, sorted(names))
            held = broker.quarantined(client)
        except Exception as error:  # Redis answered a moment ago; say what failed, do not raise
            self.add("broker queues", "warn", f"could not list Redis's queues: {first_line(error)}")
            return
        consuming = fleet.consumers(found) if found is not None else {}
        lonely = {name: count for name, count in depths.items() if count and not consuming.get(name)}
        if lonely and found is not None:
            listed = ", ".join(f"{name} ({count})" for name, count in sorted(lonely.items()))
            self.add(
                "broker queues",
                "warn",
                f"Redis queue(s) hold messages no live worker consumes: {listed}",
                "start `jobs worker -Q " + ",".join(sorted(lonely)) + "`, or delete the queue if it is stray",
            )
        else:
            self.add(
                "broker queues",
                "ok",
                f"{len(depths)} queue(s) in Redis; each one with messages has a consumer",
            )
        if held.kept:
            newest = held.newest[:40] if held.newest else b""
            self.add(
                "quarantine",
                "warn",
                f"{held.kept} malformed item(s) taken off the queues are kept in the Redis list"
                f" {broker.QUARANTINE} ({held.total} since Redis started; newest starts {newest!r})",
                f"look: `redis-cli LRANGE {broker.QUARANTINE} 0 9`; find who wrote them, then DEL the list",
            )

    def flower(self) -> None:
        """Probe ``/healthcheck`` (it needs no credentials), so a Flower that ``jobs dev`` started counts."""
        import httpx

        configured = bool(self.settings.flower_user)
        url = f"http://{health._probe_host(self.settings.flower_address)}:{self.settings.flower_port}/healthcheck"
        try:
            response = httpx.get(url, timeout=self.timeout)
        except httpx.HTTPError as error:
            if configured:
                self.add("flower", "fail", f"{url}: {first_line(error)}", "start `jobs flower`")
            else:
                self.add("flower", "skip", f"not running at {url} (none expected: JOBS_FLOWER_USER is unset)")
            return
        if response.status_code == 200:
            self.add("flower", "ok", f"{url} answered")
        elif configured:
            self.add("flower", "fail", f"{url} answered {response.status_code}", "check Flower's log")
        else:
            self.add(
                "flower",
                "warn",
                f"{url} answered {response.status_code}: something other than Flower listens there?",
                "set JOBS_FLOWER_PORT to Flower's port",
            )


def _skip(doctor: _Doctor, names: list[str], because: str) -> None:
    for name in names:
        doctor.add(name, "skip", f"skipped: {because}")


def run(settings: Settings, *, timeout: float = 2.0) -> list[Check]:
    """Every check, in order; never raises for a server that is down (that is a failed check)."""
    doctor = _Doctor(settings, timeout)
    leader: Any = None
    ledger_ok = doctor.postgres() and doctor.migrations()
    doctor.ledger_ok = ledger_ok
    if ledger_ok:
        doctor.autovacuum()
        leader = doctor.ledger_facts()
        doctor.leader(leader)
    else:
        _skip(doctor, ["autovacuum", "leader"], "the ledger is not usable")
    steps: list[Callable[[], None]] = []
    if doctor.redis():
        steps += [doctor.workers, doctor.broker_queues]
    else:
        _skip(
            doctor,
            ["redis persistence", "redis eviction", "workers", "broker queues"],
            "Redis is unreachable",
        )
    steps.append(doctor.flower)
    for step in steps:
        step()
    return doctor.checks


MARKS = {"ok": "[green]✓[/]", "fail": "[bold red]✗[/]", "warn": "[yellow]![/]", "skip": "[dim]-[/]"}


@click.command()
@click.option(
    "--timeout", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds per check."
)
@options.json_output()
def doctor(timeout: float, as_json: bool) -> None:
    """Check PostgreSQL, migrations, Redis, the leader, workers and Flower; exit 0 only if none fails."""
    from jobs.cli.output import console

    checks = run(context.settings(), timeout=timeout)
    healthy = all(check.status != "fail" for check in checks)
    if as_json:
        emit_json({"ok": healthy, "checks": [check.as_dict() for check in checks]})
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            line = f"{MARKS[check.status]} {check.name:<{width}}  {check.detail}"
            if check.fix and check.status in ("fail", "warn"):
                line += f" [dim]→ {check.fix}[/]"
            console.print(line, markup=True, highlight=False)
        failed = sum(check.status == "fail" for check in checks)
        warned = sum(check.status == "warn" for check in checks)
        console.print(f"{failed} failed, {warned} warning(s)" if failed or warned else "all checks passed")
    sys.exit(0 if healthy else 1)
