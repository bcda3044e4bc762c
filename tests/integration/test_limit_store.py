"""The ``limits`` table's store and the usage views, against a real ledger.

Limited jobs and their slots are made by hand (``tests.support.limits``): these tests check what
the store keeps and what operators are shown, not admission.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from jobs import db, explain, limit_control, limit_store, limit_usage, metrics
from jobs.errors import InvalidLimit, LimitNotFound
from jobs.kinds import Kind, Registry
from jobs.limits import Limit
from jobs.schema import limit_keys, limit_slots
from jobs.settings import Settings
from tests.support.limits import limited_job, rate_state

pytestmark = pytest.mark.integration


class Sync(BaseModel):
    tenant: str


def registry_with(*limits: Limit, name: str = "crm.sync") -> Registry:
    registry = Registry()
    registry.register(Kind(name=name, payload=Sync, limits=limits))
    return registry


def put(settings: Settings, limit: Limit, **options) -> tuple[limit_store.LimitRow, bool]:
    with db.transaction(settings) as conn:
        return limit_store.put(conn, limit, by=options.pop("by", "cli:test"), **options)


def read(settings: Settings, name: str) -> limit_store.LimitRow:
    with db.transaction(settings) as conn:
        return limit_store.get(conn, name)


def test_put_get_and_list_a_limit_with_its_rate_and_key(clean):
    row, changed = put(clean, Limit("crm-api", rate="20/s", burst=5, kind="crm.sync", key="tenant"))
    assert changed
    assert (row.kind, row.key, row.rate, row.period, row.burst, row.declared) == (
        "crm.sync",
        "tenant",
        20,
        1.0,
        5,
        False,
    )
    assert row.describe() == "20/s (burst 5)"
    assert row.target == "kind crm.sync per tenant"
    assert row.spec() == Limit("crm-api", rate="20/s", burst=5, kind="crm.sync", key="tenant")
    assert read(clean, "crm-api") == row
    put(clean, Limit("mail-cap", concurrency=3, queue="mail"))
    with db.transaction(clean) as conn:
        assert [found.name for found in limit_store.list_limits(conn)] == ["crm-api", "mail-cap"]


def test_putting_the_same_values_again_changes_nothing_and_new_numbers_are_kept(clean):
    put(clean, Limit("cap", concurrency=2, kind="crm.sync"))
    _, changed = put(clean, Limit("cap", concurrency=2, kind="crm.sync"))
    assert not changed
    row, changed = put(clean, Limit("cap", rate="5/10s", kind="crm.sync"), by="cli:ops")
    assert changed
    assert (row.concurrency, row.rate, row.period, row.updated_by) == (None, 5, 10.0, "cli:ops")
    assert row.rate_text == "5/10s"


def test_an_operator_cannot_change_what_a_limit_limits(clean):
    put(clean, Limit("cap", concurrency=2, kind="crm.sync", key="tenant"))
    with pytest.raises(
        InvalidLimit, match=r"limits kind crm\.sync per tenant: to limit something else, remove it"
    ):
        put(clean, Limit("cap", concurrency=2, queue="mail"))


def test_a_missing_limit_is_named_with_the_closest_one(clean):
    put(clean, Limit("tenant-cap", concurrency=2, kind="crm.sync"))
    with pytest.raises(LimitNotFound, match=r"no limit named 'tenant-cop' \(did you mean 'tenant-cap'\?\)"):
        read(clean, "tenant-cop")
    with pytest.raises(LimitNotFound, match=r"no limit named 'zzz' \(see jobs limits\)"):
        read(clean, "zzz")


def test_removing_a_limit_takes_its_slots_and_keys_along(clean):
    put(clean, Limit("cap", concurrency=1, kind="test.work", key="key"))
    job = limited_job(clean, "cap", "a")
    rate_state(clean, "cap", "a", tat_in=1)
    with db.transaction(clean) as conn:
        assert limit_store.remove(conn, "cap").name == "cap"
        assert conn.execute(sa.select(sa.func.count()).select_from(limit_slots)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(limit_keys)).scalar_one() == 0
        assert limit_usage.waits_of(conn, job) == []
    with pytest.raises(LimitNotFound):
        read(clean, "cap")


def test_sync_writes_declared_limits_and_updates_only_rows_the_code_still_owns(clean):
    declared = registry_with(Limit("crm-cap", concurrency=2, key="tenant"), Limit("crm-api", rate="20/s"))
    with db.transaction(clean) as conn:
        assert limit_store.sync_declared(conn, declared) == ["crm-api", "crm-cap"]
        assert limit_store.sync_declared(conn, declared) == []  # nothing changed
    assert read(clean, "crm-cap").declared
    assert read(clean, "crm-cap").updated_by == "code"

    # An operator takes crm-api over; the code changes both; only crm-cap follows the code.
    put(clean, Limit("crm-api", rate="50/s", kind="crm.sync"), by="cli:ops")
    changed = registry_with(Limit("crm-cap", concurrency=4, key="tenant"), Limit("crm-api", rate="10/s"))
    with db.transaction(clean) as conn:
        assert limit_store.sync_declared(conn, changed) == ["crm-cap"]
    assert read(clean, "crm-cap").concurrency == 4
    api = read(clean, "crm-api")
    assert (api.rate, api.declared, api.updated_by) == (50, False, "cli:ops")


def test_sync_deletes_a_declared_limit_only_when_its_kind_is_known_here(clean):
    with db.transaction(clean) as conn:
        limit_store.sync_declared(conn, registry_with(Limit("crm-cap", concurrency=2)))
        # A process that does not load crm.sync leaves its limit alone…
        assert limit_store.sync_declared(conn, registry_with(name="other.kind")) == []
        assert [row.name for row in limit_store.list_limits(conn)] == ["crm-cap"]
        # …one that loads crm.sync, which no longer declares it, deletes it.
        assert limit_store.sync_declared(conn, registry_with()) == ["crm-cap"]
        assert limit_store.list_limits(conn) == []


def test_remove_refuses_a_declared_limit_and_gives_an_overridden_one_back_to_the_code(clean, registry):
    declared = registry_with(Limit("crm-cap", concurrency=2, key="tenant"))
    limit_control.sync(clean, declared)
    with pytest.raises(InvalidLimit, match=r"is declared in code on kind crm\.sync: remove it there"):
        limit_control.remove(clean, declared, "crm-cap", by="cli:ops")

    limit_control.set_limit(
        clean, declared, Limit("crm-cap", concurrency=9, kind="crm.sync", key="tenant"), by="cli:ops"
    )
    assert read(clean, "crm-cap").concurrency == 9
    done = limit_control.remove(clean, declared, "crm-cap", by="cli:ops")
    assert done.was.concurrency == 9
    assert done.restored is not None
    assert (done.restored.concurrency, done.restored.declared) == (2, True)

    limit_control.set_limit(clean, registry, Limit("ours", concurrency=1, kind="test.work"), by="cli:ops")
    done = limit_control.remove(clean, registry, "ours", by="cli:ops")
    assert done.restored is None
    with pytest.raises(LimitNotFound):
        read(clean, "ours")


def test_usage_counts_running_and_waiting_per_key(clean):
    put(clean, Limit("cap", concurrency=2, kind="test.work", key="key"))
    limited_job(clean, "cap", "a", state="running", admitted=100, started=90)
    limited_job(clean, "cap", "a", state="running", admitted=50, started=40)
    limited_job(clean, "cap", "a", state="queued", admitted=1)  # admitted, not started yet: counts
    limited_job(clean, "cap", "a", state="retrying", admitted=200)  # waits out a backoff: does not
    for _ in range(3):
        limited_job(clean, "cap", "a")
    limited_job(clean, "cap", "b")
    limited_job(clean, "cap", "b", state="queued")  # not admitted and not held: neither
    put(clean, Limit("idle", concurrency=1, queue="mail"))
    with db.transaction(clean) as conn:
        found = limit_usage.usage(conn)
    assert found["idle"] == []
    a, b = found["cap"]
    assert (a.key, a.running, a.waiting, a.keys) == ("a", 3, 3, 1)
    assert a.oldest_started_at is not None
    assert (b.key, b.running, b.waiting) == ("b", 0, 1)


def test_usage_shows_the_busiest_keys_and_sums_the_rest_as_other(clean):
    put(clean, Limit("cap", concurrency=1, kind="test.work", key="key"))
    for n in range(5):
        for _ in range(n + 1):
            limited_job(clean, "cap", f"tenant-{n}")
    limited_job(clean, "cap", "tenant-0", state="running", admitted=5, started=5)
    with db.transaction(clean) as conn:
        keys = limit_usage.usage(conn, "cap", top=2)["cap"]
    assert [(key.label, key.waiting, key.running, key.keys) for key in keys] == [
        ("tenant-4", 5, 0, 1),
        ("tenant-3", 4, 0, 1),
        ("other", 3 + 2 + 1, 1, 3),
    ]


def test_a_rate_limits_usage_counts_recent_admissions_and_its_next_start(clean):
    put(clean, Limit("api", rate="2/m", kind="test.work"))
    limited_job(clean, "api", state="running", admitted=10, started=9)
    limited_job(clean, "api", state="running", admitted=100, started=99)  # before the period
    limited_job(clean, "api")
    rate_state(clean, "api", tat_in=20, last_ago=10)
    with db.transaction(clean) as conn:
        (key,) = limit_usage.usage(conn, "api")["api"]
    assert (key.running, key.waiting, key.admitted_in_period) == (2, 1, 1)
    assert key.tat is not None
    assert key.last_admitted_at is not None


def test_waits_of_a_held_job_say_how_full_its_key_is_and_who_is_ahead(clean):
    put(clean, Limit("cap", concurrency=2, kind="test.work", key="key"))
    put(clean, Limit("api", rate="1/s", kind="test.work"))
    for started in (180, 60):
        limited_job(clean, "cap", "42", state="running", admitted=started, started=started)
    for waited in (300, 200):
        limited_job(clean, "cap", "42", waited=waited)
    job = limited_job(clean, "cap", "42", waited=100)
    limited_job(clean, "cap", "42", waited=10)  # behind it
    limited_job(clean, "cap", "7", waited=500)  # another key
    with db.transaction(clean) as conn:
        conn.execute(
            sa.insert(limit_slots).values(job_id=job, limit_name="api", key="", admitted_at=sa.func.now())
        )
    facts = explain.gather(clean, job)
    cap, api = sorted(facts.limits, key=lambda wait: wait.limit.name, reverse=True)
    assert (cap.running, cap.waiting, cap.ahead, cap.admitted_at) == (2, 4, 2, None)
    assert api.admitted_at is not None
    (reason, *_) = explain.reasons(facts)
    assert reason.code == "limit"
    assert reason.message.startswith("waiting for limit cap, key key=42: 2/2 running (oldest started 3m")
    assert reason.message.endswith("; 2 waiting ahead of it")


def test_a_scrape_shows_each_limits_keys_and_cap(clean, monkeypatch):
    monkeypatch.setattr(metrics, "LIMIT_KEYS", 1)
    put(clean, Limit("cap", concurrency=2, kind="test.work", key="key"))
    limited_job(clean, "cap", "a", state="running", admitted=5, started=5)
    limited_job(clean, "cap", "a")
    limited_job(clean, "cap", "b")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry(clean)).decode())
        for sample in family.samples
    }
    assert samples[("jobs_limit_running", (("key", "a"), ("limit", "cap")))] == 1
    assert samples[("jobs_limit_waiting", (("key", "a"), ("limit", "cap")))] == 1
    assert samples[("jobs_limit_waiting", (("key", "other"), ("limit", "cap")))] == 1
    assert samples[("jobs_limit_concurrency", (("limit", "cap"),))] == 2
    assert samples[("jobs_jobs", (("queue", "default"), ("state", "held")))] == 2
