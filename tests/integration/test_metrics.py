"""The Prometheus exporter, scraped over HTTP, says what the ledger says."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from jobs import db, metrics
from jobs.leader import LOCK_KEY
from jobs.schema import jobs
from jobs.settings import Settings, load_settings
from tests.integration.test_cockpit_ledger import ago, free_port, put

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
