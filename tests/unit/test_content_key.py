"""Content keys: what a unique window and a debounce compare (``jobs.limits.content_key``)."""

from __future__ import annotations

import pytest

from jobs.errors import InvalidLimit
from jobs.limits import Debounce, Unique, content_key

pytestmark = pytest.mark.unit

TENANT = (("tenant",),)


def test_equal_payloads_have_equal_keys_whatever_their_key_order():
    first = content_key("crm.sync", {"tenant": "a", "order": {"id": 7, "lines": [1, 2]}}, ())
    second = content_key("crm.sync", {"order": {"lines": [1, 2], "id": 7}, "tenant": "a"}, ())
    assert first == second
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_the_whole_payload_counts_when_no_field_is_named():
    assert content_key("k", {"tenant": "a", "note": "1"}, ()) != content_key(
        "k", {"tenant": "a", "note": "2"}, ()
    )


def test_only_the_named_fields_count():
    assert content_key("k", {"tenant": "a", "note": "1"}, TENANT) == content_key("k", {"tenant": "a"}, TENANT)
    assert content_key("k", {"tenant": "a"}, TENANT) != content_key("k", {"tenant": "b"}, TENANT)


def test_the_kind_is_part_of_the_key():
    assert content_key("one", {"tenant": "a"}, TENANT) != content_key("two", {"tenant": "a"}, TENANT)
    assert content_key("one", {}, ()) != content_key("two", {}, ())


def test_nested_paths_and_several_fields():
    paths = (("customer", "id"), ("region",))
    same = content_key("k", {"customer": {"id": 1, "name": "x"}, "region": "eu"}, paths)
    assert same == content_key("k", {"customer": {"id": 1, "name": "y"}, "region": "eu"}, paths)
    assert same != content_key("k", {"customer": {"id": 2}, "region": "eu"}, paths)
    assert same != content_key("k", {"customer": {"id": 1}, "region": "us"}, paths)


def test_a_field_is_told_from_another_holding_the_same_value():
    swapped = (("a",), ("b",))
    assert content_key("k", {"a": 1, "b": 2}, swapped) != content_key("k", {"a": 2, "b": 1}, swapped)


def test_values_keep_their_json_type():
    assert content_key("k", {"tenant": 1}, TENANT) != content_key("k", {"tenant": "1"}, TENANT)
    assert content_key("k", {"tenant": True}, TENANT) != content_key("k", {"tenant": 1}, TENANT)


def test_a_missing_field_counts_as_null():
    assert content_key("k", {}, TENANT) == content_key("k", {"tenant": None}, TENANT)
    assert content_key("k", {"customer": "not an object"}, (("customer", "id"),)) == content_key(
        "k", {}, (("customer", "id"),)
    )


def test_the_specs_describe_themselves():
    assert Unique(fields=("tenant",), period=60).describe() == "same tenant within 60s"
    assert Unique().describe() == "same payload while unfinished"
    assert Unique(fields=("tenant", "order.id"), period=0.5).describe() == "same tenant, order.id within 0.5s"
    assert (
        Debounce(period=5, fields=("tenant",)).describe() == "same tenant: runs 5s after the last submission"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Unique(period=0), "period must be positive"),
        (lambda: Debounce(period=-1), "debounce period must be positive"),
        (lambda: Unique(fields=("no such.path!",)), "must be dotted field names"),
    ],
)
def test_the_specs_refuse_what_cannot_work(make, message):
    with pytest.raises(InvalidLimit, match=message):
        make()
