"""The fleet's pure parts: malformed items, foreign messages, node names, kinds' versions, consumers."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from jobs import broker, fleet, observe, snapshot
from jobs.cli.processes import default_node_name
from jobs.kinds import Kind
from workers import transport, unknown

pytestmark = pytest.mark.unit


def envelope(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "body": "W10=",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "ping", "id": str(uuid.uuid4())},
        "properties": {
            "delivery_tag": "tag-1",
            "delivery_info": {"exchange": "", "routing_key": "default"},
            "body_encoding": "base64",
            "priority": 0,
        },
    }
    message.update(changes)
    return message


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (b"garbage", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b"{}", "no properties object"),
        (json.dumps(envelope(properties=[])), "no properties object"),
        (json.dumps(envelope(properties={"delivery_info": {}})), "no delivery tag"),
        (
            json.dumps(envelope(properties={"delivery_tag": ["x"], "delivery_info": {}})),
            "no delivery tag",
        ),
        (json.dumps(envelope(properties={"delivery_tag": 1})), "no delivery info"),
        (
            json.dumps(envelope(properties={"delivery_tag": 1, "delivery_info": {"exchange": ""}})),
            "no delivery info",
        ),
        (json.dumps(envelope(body=7)), "a body that is not a string"),
        (
            json.dumps(
                envelope(
                    properties={
                        "delivery_tag": 1,
                        "delivery_info": {"exchange": "", "routing_key": "q"},
                        "body_encoding": "rot13",
                    }
                )
            ),
            "an unknown body encoding 'rot13'",
        ),
        (json.dumps(envelope(body="abc")), "a body that is not base64"),
    ],
)
def test_items_kombu_cannot_take_are_malformed(item: bytes | str, why: str) -> None:
    assert transport.malformed(item) == why


def test_a_kombu_envelope_is_not_malformed_whatever_its_body_says() -> None:
    assert transport.malformed(json.dumps(envelope())) is None
    # A body that is not JSON, or a message without task headers, is Celery's business (refused, acked).
    assert transport.malformed(json.dumps(envelope(body="e3RoaXM=", headers={}))) is None
    assert transport.malformed(json.dumps(envelope(body=None, headers=None))) is None


def test_a_foreign_message_is_read_for_its_id_kind_queue_priority_and_payload() -> None:
    job_id = uuid.uuid4()
    found = unknown.parse(
        {"id": str(job_id), "task": "new.kind"},
        {"routing_key": "images"},
        {"priority": 3},
        [[], {"size": 7}, {}],
        "default",
    )
    assert found == unknown.Foreign(job_id, "new.kind", "images", 3, {"size": 7})


def test_a_foreign_message_with_odd_fields_still_has_a_row_to_go_to() -> None:
    found = unknown.parse(
        {"id": "order-42", "task": "x"}, None, {"priority": "high"}, "not a list", "default"
    )
    assert found is not None
    assert (found.queue, found.priority, found.payload, found.bad_id) == ("default", 5, {}, "order-42")
    # The same task id always maps to the same job id: copies of one message meet one row.
    assert found.job_id == unknown.job_id_of("order-42")[0]
    assert unknown.job_id_of("order-42") != unknown.job_id_of("order-43")
    assert unknown.parse({"task": "x"}, None, None, None, "default") is None


def test_default_node_names_are_unique_and_say_whose_they_are() -> None:
    names = {default_node_name() for _ in range(50)}
    assert len(names) > 40  # pid plus 16 random bits: collisions are rare, not impossible
    assert all(re.fullmatch(r"worker-\d+-[0-9a-f]{4}@%h", name) for name in names)


class Payload(BaseModel):
    name: str


class Changed(BaseModel):
    name: str
    times: int = 1


def test_a_kind_advertises_its_schema_unless_it_names_a_version() -> None:
    first = Kind("greet", payload=Payload).advertised_version
    assert first.startswith("schema:")
    assert first == Kind("greet", payload=Payload).advertised_version
    assert first != Kind("greet", payload=Changed).advertised_version
    assert Kind("greet", payload=Payload, version="2.1").advertised_version == "2.1"


def worker(
    name: str, state: str = "alive", queues: tuple[str, ...] = ("default",), **kinds: str
) -> fleet.Worker:
    return fleet.Worker(name, list(queues), "prefork", 2, 10.0, 1, [], kinds=kinds, state=state)


def test_consumers_are_the_live_workers_started_with_the_queue() -> None:
    found = [
        worker("a", ping="1"),
        worker("b", "silent", ping="1"),
        worker("c", "stopped"),
        worker("d", "unlisted", queues=("images",)),
    ]
    assert fleet.consumers(found) == {"default": ["a"], "images": ["d"]}
    assert fleet.implementers(found, "ping") == ["a"]
    assert fleet.implementers(found, "ping", "images") == []


def process(name: str, state: str = "alive", active: int = 0, uptime: float = 10.0) -> fleet.Worker:
    """One process of a batched worker, as the roster and its own remote control list it."""
    running = [fleet.ActiveJob(f"{name}/{n}", "ping", None) for n in range(active)]
    return fleet.Worker(name, ["default"], "batched", 1, uptime, 7, running, kinds={"ping": "1"}, state=state)


def test_the_processes_of_a_batched_worker_are_listed_as_one_worker() -> None:
    found = fleet.grouped(
        [
            process("w-1.00aa@h", active=1, uptime=30.0),
            process("w-2.00bb@h", active=1),
            process("w-2.0fff@h", "silent"),  # the incarnation its supervisor replaced
            process("v-1.00cc@h"),
            worker("w-3.00dd@h"),  # a prefork worker named so by hand is itself
        ]
    )
    by_name = {(w.name, w.state): w for w in found}
    assert sorted(by_name) == [("v@h", "alive"), ("w-3.00dd@h", "alive"), ("w@h", "alive"), ("w@h", "silent")]
    batched = by_name["w@h", "alive"]
    assert (batched.pool, batched.concurrency, batched.uptime, batched.pid) == ("batched", 2, 30.0, None)
    assert [job.id for job in batched.active] == ["w-1.00aa@h/0", "w-2.00bb@h/0"]
    assert [p.name for p in batched.processes] == ["w-1.00aa@h", "w-2.00bb@h"]
    assert (batched.kinds, batched.queues) == ({"ping": "1"}, ["default"])
    assert [p.name for p in by_name["w@h", "silent"].processes] == ["w-2.0fff@h"]
    assert sorted(fleet.consumers(found)["default"]) == ["v@h", "w-3.00dd@h", "w@h"]
    assert sorted(fleet.implementers(found, "ping")) == ["v@h", "w@h"]
    assert json.loads(json.dumps(batched.as_dict()))["processes"][0]["pid"] == 7
    # The ledger names the process a job runs on: `jobs explain` and `jobs top` find it live.
    assert fleet.live_nodes(found) == {"v@h", "v-1.00cc@h", "w-3.00dd@h", "w@h", "w-1.00aa@h", "w-2.00bb@h"}


def view(
    queued: int, ready: int, unpublished: int = 0, consumers: list[str] | None = None
) -> snapshot.QueueView:
    stats = observe.QueueStats("q", {"queued": queued} if queued else {}, None, 0, 0, unpublished)
    return snapshot.QueueView("q", stats, broker.Depth("q", ready, 0), consumers, paused=False)


def test_jobs_waiting_in_the_ledger_are_no_mismatch_with_redis() -> None:
    assert not view(queued=3, ready=1, unpublished=2).mismatch
    assert view(queued=3, ready=1).mismatch


def test_a_queue_is_unconsumed_when_work_waits_and_no_live_worker_takes_it() -> None:
    assert view(queued=0, ready=2, consumers=[]).unconsumed  # only Redis knows: a stray queue
    assert view(queued=1, ready=0, consumers=[]).unconsumed
    assert not view(queued=1, ready=1, consumers=["w"]).unconsumed
    assert not view(queued=0, ready=0, consumers=[]).unconsumed
    assert not view(queued=1, ready=1, consumers=None).unconsumed  # the workers could not be asked
