"""``jobs limits`` and what operators are told about limits, without servers.

Bad ``jobs limits set`` input is refused before the ledger is touched (the ledger here is
unreachable: reaching it would exit 3); ``jobs explain``'s reasons for a held job and ``jobs
top``'s limits panel are pure functions of what the ledger said.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from rich.console import Console

from jobs import explain, limit_store, limit_usage
from jobs.cli import limit_tables, top
from jobs.cli.limits import spec_of
from jobs.cli.main import cli
from jobs.errors import InvalidLimit, UnknownKind
from jobs.kinds import Kind, Registry
from jobs.limits import Limit, parse_rate
from jobs.testing import reset
from tests.unit.test_cockpit_views import a_job, busy_snapshot, facts, frame

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
UNREACHABLE = {
    "JOBS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never_test",
    "JOBS_BROKER_URL": "redis://127.0.0.1:1/9",
}


@pytest.fixture(autouse=True)
def _fresh_settings():
    reset()
    yield
    reset()


def run(*args: str):
    return CliRunner().invoke(cli, ["limits", *args], env=UNREACHABLE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--kind", "test.wrok", "--concurrency", "2"],
            "unknown job kind 'test.wrok' (did you mean 'test.work'?)",
        ),
        (
            ["--kind", "test.work", "--key", "tenant", "--concurrency", "2"],
            "kind 'test.work' has no field 'tenant'",
        ),
        (["--kind", "test.work", "--rate", "0/s"], "must allow at least one start per period"),
        (["--kind", "test.work", "--rate", "fast"], "rate 'fast' is not N/PERIOD"),
        (["--kind", "test.work", "--concurrency", "0"], "concurrency must be at least 1"),
        (
            ["--kind", "test.work", "--concurrency", "2", "--rate", "5/s"],
            "give --concurrency N or --rate N/PERIOD",
        ),
        (["--kind", "test.work"], "give --concurrency N or --rate N/PERIOD (one of them)"),
        (["--concurrency", "2", "--burst", "3"], "--burst goes with --rate"),
        (
            ["--queue", "mail", "--key", "key", "--concurrency", "2"],
            "--key is a payload field: it goes with --kind",
        ),
        (["--key", "key", "--concurrency", "2"], "--key is a payload field of a kind: give --kind KIND too"),
        (
            ["--kind", "ping", "--queue", "mail", "--concurrency", "1"],
            "give --kind KIND or --queue QUEUE, not both",
        ),
        (["--kind", "test.work", "--rate", "5/s", "--burst", "-1"], "burst cannot be negative"),
        (["--kind", "test.work", "--concurrency", "two"], "'two' is not a valid integer"),
    ],
)
def test_bad_set_input_exits_2_with_one_line_before_the_ledger(args, message):
    result = run("set", "cap", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_bad_name_is_refused_in_one_line():
    result = run("set", "Tenant Cap", "--kind", "test.work", "--concurrency", "2")
    assert result.exit_code == 2
    assert "limit name 'Tenant Cap' must be lower-case letters" in result.output


def test_reading_limits_from_an_unreachable_ledger_exits_3():
    result = run("show", "cap")
    assert result.exit_code == 3
    assert "Traceback" not in result.output


class Address(BaseModel):
    city: str


class Order(BaseModel):
    customer: Address
    extra: dict[str, str] = {}


def registry() -> Registry:
    kinds = Registry()
    kinds.register(Kind(name="shop.order", payload=Order))
    return kinds


def spec(name: str = "cap", **options) -> Limit:
    given = {"kind": None, "queue": None, "key": None, "concurrency": None, "rate": None, "burst": None}
    return spec_of(name, **{**given, **options}, registry=registry())


def test_a_key_may_be_a_nested_field_or_anything_below_a_dict():
    assert spec(kind="shop.order", key="customer.city", concurrency=2).path == ("customer", "city")
    assert spec(kind="shop.order", key="extra.region", concurrency=2).path == ("extra", "region")
    with pytest.raises(InvalidLimit, match=r"has no field 'customer.zip' \(customer has: city\)"):
        spec(kind="shop.order", key="customer.zip", concurrency=2)
    with pytest.raises(UnknownKind, match=r"did you mean 'shop\.order'"):
        spec(kind="shop.ordr", concurrency=2)


def test_a_change_of_numbers_keeps_what_an_existing_limit_limits():
    existing = limit_store.LimitRow(
        "cap", "shop.order", None, "customer.city", 2, None, None, 0, False, NOW, NOW, "cli:ops"
    )
    raised = spec_of(
        "cap",
        kind=None,
        queue=None,
        key=None,
        concurrency=5,
        rate=None,
        burst=None,
        registry=registry(),
        existing=existing,
    )
    assert (raised.kind, raised.key, raised.concurrency) == ("shop.order", "customer.city", 5)
    with pytest.raises(InvalidLimit, match="limit 'cap' is new: say what it limits"):
        spec(concurrency=5)


@pytest.mark.parametrize(
    ("rate", "period", "text"),
    [(20, 1.0, "20/s"), (100, 60.0, "100/m"), (5, 3600.0, "5/h"), (5, 10.0, "5/10s"), (3, 0.5, "3/0.5s")],
)
def test_a_stored_rate_reads_back_as_it_was_set(rate, period, text):
    assert limit_store.rate_text(rate, period) == text
    assert parse_rate(text) == (rate, period)


def a_limit(**fields) -> limit_store.LimitRow:
    values = {
        "name": "tenant-cap",
        "kind": "crm.sync",
        "queue": None,
        "key": "tenant",
        "concurrency": 2,
        "rate": None,
        "period": None,
        "burst": 0,
        "declared": False,
        "created_at": NOW,
        "updated_at": NOW,
        "updated_by": "cli:ops",
        **fields,
    }
    return limit_store.LimitRow(**values)


def a_wait(limit: limit_store.LimitRow, **fields) -> limit_usage.Wait:
    values = {
        "limit": limit,
        "key": "42",
        "waiting_since": NOW - timedelta(minutes=1),
        "admitted_at": None,
        "running": 2,
        "waiting": 58,
        "ahead": 57,
        "oldest_started_at": NOW - timedelta(minutes=3),
        "tat": None,
        "last_admitted_at": None,
        **fields,
    }
    return limit_usage.Wait(**values)


API = a_limit(name="crm-api", key=None, concurrency=None, rate=20, period=1.0, burst=5)


def reasons(*waits: limit_usage.Wait, **fields) -> list[explain.Reason]:
    return explain.reasons(facts(a_job("held", published_at=None), limits=list(waits), **fields))


def test_a_held_job_says_which_limit_holds_it_and_how_full_its_key_is():
    (reason,) = reasons(a_wait(a_limit()))
    assert reason.code == "limit"
    assert reason.message == (
        "waiting for limit tenant-cap, key tenant=42: 2/2 running (oldest started 3m00s ago);"
        " 57 waiting ahead of it"
    )
    assert "jobs limits set tenant-cap --concurrency N" in reason.action


def test_a_held_job_behind_a_rate_limit_says_when_the_next_start_is():
    # tat 0.55 s ahead, tolerance 5 x 0.05 s: the next start is due in 0.3 s.
    (reason,) = reasons(a_wait(API, key="", ahead=0, running=0, tat=NOW + timedelta(seconds=0.55)))
    assert reason.message == "waiting for limit crm-api: 20/s (burst 5), next start in 0.3s"
    (reason,) = reasons(a_wait(API, key="", ahead=10, running=0, tat=NOW))
    assert reason.message == (
        "waiting for limit crm-api: 20/s (burst 5), next start now;"
        " 10 waiting ahead of it (its turn in about 0.5s)"
    )


def test_several_limits_give_one_line_each_for_those_not_admitting_it():
    found = reasons(
        a_wait(a_limit()),
        a_wait(a_limit(name="roomy", concurrency=100)),  # room: not a reason
        a_wait(API, key="", admitted_at=NOW),  # already admitted: not a reason
        a_wait(a_limit(name="mail-cap", kind=None, queue="mail", key=None), key="", running=3, ahead=0),
    )
    assert [reason.message.split(":")[0] for reason in found] == [
        "waiting for limit tenant-cap, key tenant=42",
        "waiting for limit mail-cap (queue mail)",
    ]


def test_a_held_job_its_limits_all_admit_is_being_admitted():
    (reason,) = reasons(a_wait(a_limit(), running=0, ahead=0), a_wait(API, key="", ahead=0))
    assert reason.code == "admitting"
    assert "every limit it waits for has room: it is being admitted" in reason.message
    (reason,) = reasons()
    assert "no limit holds it any more" in reason.message
    assert [reason.code for reason in reasons(leader=None)] == ["admitting", "no_leader"]


def keyed(key: str | None, **fields) -> limit_usage.KeyUsage:
    values = {
        "running": 2,
        "waiting": 5,
        "oldest_started_at": NOW - timedelta(seconds=90),
        "admitted_in_period": 0,
    }
    return limit_usage.KeyUsage("tenant-cap", key, **{**values, **fields})


def test_key_cells_show_running_against_the_cap_and_a_rates_next_start():
    row = a_limit()
    assert limit_tables.key_label(row, keyed("42")) == "tenant=42"
    assert limit_tables.key_label(row, keyed(None, keys=17)) == "other (17 keys)"
    assert limit_tables.key_label(API, keyed("")) == "(all)"
    assert limit_tables.key_cells(row, keyed("42"), NOW) == (
        "[bold red]2/2[/]",
        "[yellow]5[/]",
        "1m30s ago",
        "-",
    )
    due = keyed("", running=0, waiting=0, oldest_started_at=None, tat=NOW + timedelta(seconds=2.25))
    assert limit_tables.key_cells(API, due, NOW) == ("0", "0", "-", "in 2.0s")


def test_top_shows_the_busiest_limited_keys_and_still_fits_80x24():
    taken = busy_snapshot()
    limited = [(a_limit(), keyed(f"tenant-{n}", waiting=100 - n)) for n in range(10)]
    taken = dataclasses.replace(taken, ledger=dataclasses.replace(taken.ledger, limits=limited))
    lines = frame(taken)
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "busiest limited keys: 10 (" in text
    assert "tenant=tenant-0" in text
    assert taken.as_dict()["limits"][0]["limit"] == "tenant-cap"


def test_top_without_limits_shows_no_limits_section():
    console = Console(width=80, height=24, record=True, color_system=None, file=io.StringIO())
    console.print(top.render(busy_snapshot(queues=2, running=2, failures=1), 24))
    assert "limited" not in console.export_text()


def test_state_completion_and_choices_offer_held():
    from click.shell_completion import ShellComplete

    completion = ShellComplete(cli, {}, "jobs", "_JOBS_COMPLETE")
    assert [item.value for item in completion.get_completions(["list", "--state"], "h")] == ["held"]
    result = CliRunner().invoke(cli, ["list", "--state", "hold"], env=UNREACHABLE)
    assert result.exit_code == 2
    assert "'held'" in result.output
