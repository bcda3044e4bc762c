"""The Prometheus exporter, scraped over HTTP, says what the ledger says."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from beat.maintenance import Rescuer
from jobs import control, counters, db, ledger, metrics
from jobs.app import get_app
from jobs.leader import LOCK_KEY
from jobs.schema import counters as counters_table
from jobs.schema import job_attempts, jobs
from jobs.settings import Settings, load_settings
from tests.integration.test_cockpit_ledger import ago, free_port, put
from tests.integration.test_worker import stage_until
from tests.support.fixtures import run_jobs

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def exporter(clean: Settings) -> Iterator[str]:
    server = metrics.serve(clean, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def ledger_counts(settings: Settings) -> dict[tuple[str, str], int]:
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(jobs.c.queue, jobs.c.state, sa.func.count()).group_by(jobs.c.queue, jobs.c.state)
        )
        return {(queue, state): count for queue, state, count in rows}


def test_a_scrape_matches_the_ledger(clean, exporter):
    for _ in range(3):
        put(clean, "queued", created_at=ago(120))
    put(clean, "queued", queue="mail")
    put(clean, "running", queue="mail", started_at=ago(1))
    put(clean, "retrying", not_before=ago(-60))
    put(clean, "succeeded", kind="test.sleep", finished_at=ago(5))
    put(clean, "failed", kind="test.fail", finished_at=ago(5))
    put(clean, "failed", kind="test.fail", finished_at=ago(3600))  # outside the last minute

    found = scrape(exporter)

    counts = ledger_counts(clean)
    for queue in ("cockpit", "mail"):
        for state in ("scheduled", "queued", "running", "retrying"):
            assert found["jobs_jobs", (("queue", queue), ("state", state))] == counts.get((queue, state), 0)
    assert 119 <= found["jobs_oldest_waiting_seconds", (("queue", "cockpit"),)] < 160
    assert found["jobs_finished_last_minute", (("kind", "test.fail"), ("state", "failed"))] == 1
    assert found["jobs_finished_last_minute", (("kind", "test.sleep"), ("state", "succeeded"))] == 1
    assert found["jobs_ledger_up", ()] == 1
    assert found["jobs_leader_up", ()] == 0
    assert found["jobs_queue_paused", (("queue", "mail"),)] == 0


def test_the_leader_is_seen_when_someone_holds_the_lock(clean, exporter):
    engine = sa.create_engine(
        clean.database_url,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": "jobs-leader:testhost:42"},
    )
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        try:
            found = scrape(exporter)
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
    engine.dispose()
    assert found["jobs_leader_up", ()] == 1
    assert found["jobs_leader_info", (("leader", "jobs-leader:testhost:42"),)] == 1


def test_an_unreachable_ledger_is_a_metric_not_a_crash(settings):
    down = load_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere_test")
    server = metrics.serve(down, "127.0.0.1", 0)
    try:
        found = scrape(f"http://127.0.0.1:{server.server_address[1]}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert found == {("jobs_ledger_up", ()): 0}


# Counters and histograms: a real worker (in this process) runs a mix of outcomes.


def counted_by_ledger(settings: Settings) -> dict[str, dict[tuple[str, ...], float]]:
    """What the counters should say, counted from the ledger's rows (nothing pruned yet)."""
    with db.transaction(settings) as conn:
        finished = conn.execute(
            sa.select(jobs.c.kind, jobs.c.queue, jobs.c.state, sa.func.count())
            .where(jobs.c.state.in_(["succeeded", "failed", "cancelled"]))
            .group_by(jobs.c.kind, jobs.c.queue, jobs.c.state)
        ).all()
        attempts = conn.execute(
            sa.select(jobs.c.kind, jobs.c.queue, job_attempts.c.outcome, sa.func.count())
            .join(jobs, jobs.c.id == job_attempts.c.job_id)
            .where(job_attempts.c.outcome.is_not(None))
            .group_by(jobs.c.kind, jobs.c.queue, job_attempts.c.outcome)
        ).all()
        claims = conn.execute(
            sa.select(jobs.c.kind, jobs.c.queue, sa.func.count())
            .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
            .group_by(jobs.c.kind, jobs.c.queue)
        ).all()
        runs = conn.execute(
            sa.select(jobs.c.kind, jobs.c.queue, sa.func.count())
            .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
            .where(job_attempts.c.outcome.in_(["succeeded", "error"]))
            .group_by(jobs.c.kind, jobs.c.queue)
        ).all()
    return {
        "jobs_finished_total": {(k, q, s): n for k, q, s, n in finished},
        "jobs_attempts_total": {(k, q, o): n for k, q, o, n in attempts},
        "jobs_queue_wait_seconds_count": {(k, q): n for k, q, n in claims},
        "jobs_run_seconds_count": {(k, q): n for k, q, n in runs},
    }


LABELS = {
    "jobs_finished_total": ("kind", "queue", "state"),
    "jobs_attempts_total": ("kind", "queue", "outcome"),
    "jobs_queue_wait_seconds_count": ("kind", "queue"),
    "jobs_run_seconds_count": ("kind", "queue"),
}


def exported(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, dict[tuple[str, ...], float]]:
    view: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in LABELS}
    for (name, labels), value in found.items():
        if name in LABELS:
            by_name = dict(labels)
            view[name][tuple(by_name[label] for label in LABELS[name])] = value
    return view


def wait_for_counts(
    url: str, expected: dict[str, dict[tuple[str, ...], float]], timeout: float = 15.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until the exporter says ``expected`` (each worker process writes its counts every few s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = scrape(url)
        if exported(found) == expected or time.monotonic() > deadline:
            assert exported(found) == expected
            return found
        time.sleep(0.2)


def test_counters_and_histograms_follow_the_ledger_and_outlive_pruning_and_restarts(
    clean, worker, producer, maintenance
):
    # Counts left by earlier tests' workers in this process: dropped, and a write of them already in
    # flight (it may have waited for the TRUNCATE of `clean` and landed after it) waited for and undone.
    counters.process_tally(clean).take()
    counters.flush_process()
    with db.transaction(clean) as conn:
        conn.execute(sa.delete(counters_table))
    ok = producer.submit("ping", {"message": "counted"})
    flaky = producer.submit("test.flaky", {"succeed_on": 2})
    failing = producer.submit("test.fail", {})
    waiting = producer.submit("ping", {}, delay=3600)
    for job_id in (ok, flaky, failing):
        stage_until(clean, maintenance, job_id)
    control.cancel(clean, get_app(), waiting)
    lost = put(clean, "queued", kind="test.work", queue="counted", max_attempts=1)
    with db.transaction(clean) as conn:
        assert ledger.claim(conn, lost, worker="gone@nowhere", lease=0.0) is not None
    assert Rescuer(interval=1.0).run(maintenance) == 1

    expected = counted_by_ledger(clean)
    assert expected["jobs_finished_total"] == {
        ("ping", "default", "succeeded"): 1,
        ("test.flaky", "default", "succeeded"): 1,
        ("test.fail", "default", "failed"): 1,
        ("ping", "default", "cancelled"): 1,
        ("test.work", "counted", "failed"): 1,
    }
    # The job claimed by hand above was never claimed by a worker: no queue wait observed for it.
    expected["jobs_queue_wait_seconds_count"].pop(("test.work", "counted"))
    server = metrics.serve(clean, "127.0.0.1", 0)
    try:
        found = wait_for_counts(f"http://127.0.0.1:{server.server_address[1]}/metrics", expected)
    finally:
        server.shutdown()
        server.server_close()
    assert (
        found["jobs_attempts_total", (("kind", "test.fail"), ("outcome", "error"), ("queue", "default"))] == 3
    )
    flaky_labels = (("kind", "test.flaky"), ("queue", "default"))
    assert found["jobs_run_seconds_bucket", (*flaky_labels[:1], ("le", "+Inf"), *flaky_labels[1:])] == 2
    assert 0 < found["jobs_run_seconds_sum", flaky_labels] < 5
    # Queue wait counts from when each attempt could run (the retry: its not_before, after the
    # backoff), so it is the stager's and the worker's delay only.
    assert 0 < found["jobs_queue_wait_seconds_sum", flaky_labels] < 5
    assert (
        found["jobs_queue_wait_seconds_bucket", (*flaky_labels[:1], ("le", "+Inf"), *flaky_labels[1:])] == 2
    )

    # Pruned jobs and a new exporter (any replica, any restart): the totals stay.
    with db.transaction(clean) as conn:
        conn.execute(sa.delete(jobs))
    server = metrics.serve(clean, "127.0.0.1", 0)
    try:
        again = scrape(f"http://127.0.0.1:{server.server_address[1]}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert exported(again) == expected


def test_jobs_metrics_once_prints_the_counters(clean):
    # Labels no other test counts under: this process's own tally may flush ping's counts meanwhile.
    kind, queue = "test.metrics_once", "metrics-once"
    with db.transaction(clean) as conn:
        conn.execute(sa.delete(counters_table).where(counters_table.c.kind == kind))
        tally = counters.Tally()
        tally.attempt_ended(kind, queue, "succeeded", state="succeeded", ran=0.3)
        tally.observe(counters.QUEUE_WAIT, kind, queue, 42.0)
        counters.write(conn, tally.take())
    result = run_jobs("metrics", "--once")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    labels = f'kind="{kind}",queue="{queue}"'
    assert "# TYPE jobs_finished_total counter" in text
    assert f'jobs_finished_total{{{labels},state="succeeded"}} 1.0' in text
    assert f'jobs_attempts_total{{kind="{kind}",outcome="succeeded",queue="{queue}"}} 1.0' in text
    assert "# TYPE jobs_run_seconds histogram" in text
    assert f'jobs_run_seconds_bucket{{kind="{kind}",le="0.25",queue="{queue}"}} 0.0' in text
    assert f'jobs_run_seconds_bucket{{kind="{kind}",le="0.5",queue="{queue}"}} 1.0' in text
    assert f'jobs_queue_wait_seconds_bucket{{kind="{kind}",le="60.0",queue="{queue}"}} 1.0' in text
    assert f"jobs_queue_wait_seconds_sum{{{labels}}} 42.0" in text


def test_the_fleet_and_the_quarantine_are_metrics(clean, exporter, broker):
    from jobs import broker as broker_side
    from jobs import roster

    with db.transaction(clean) as conn:
        conn.execute(sa.text("TRUNCATE workers"))
        for name in ("alive@h", "silent@h", "stopped@h"):
            roster.enlist(conn, roster.Member(name, "h", 1, ("default",), {"ping": "1"}))
        conn.execute(
            sa.text("UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE name <> 'alive@h'")
        )
        roster.retire(conn, "stopped@h")
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
    broker_side.quarantine(broker, b"garbage")
    broker_side.quarantine(broker, b"[1, 2]")
    try:
        found = scrape(exporter)
    finally:
        broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
    assert found["jobs_workers", (("state", "alive"),)] == 1
    assert found["jobs_workers", (("state", "silent"),)] == 1
    assert found["jobs_broker_up", ()] == 1
    assert found["jobs_quarantined_total", ()] == 2
    assert found["jobs_quarantine_items", ()] == 2
