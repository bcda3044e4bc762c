"""What the ledger cannot store, named before PostgreSQL refuses it (``jobs.jsonsafe``).

Each refused value below was refused by PostgreSQL 15 through psycopg 3 when
tried (``tests/integration/test_submit_properties.py`` asks the server again).
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from jobs import jsonsafe
from jobs.jsonsafe import MAX_INT_DIGITS, escaped, unstorable

pytestmark = pytest.mark.unit

HUGE = 10**MAX_INT_DIGITS


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            {"body": {"items": [0, 1, 2, {"name": "a\x00b"}]}},
            r"body.items.3.name: contains a NUL character (\u0000), which the ledger cannot store",
        ),
        (
            {"k\x00": 1},
            r'payload: the key "k\u0000" contains a NUL character (\u0000), which the ledger cannot store',
        ),
        ({"s": "\ud800"}, r"s: contains the surrogate code point \ud800, which the ledger cannot store"),
        ({"s": "x\udfff"}, r"s: contains the surrogate code point \udfff, which the ledger cannot store"),
        # A high-low pair would come back from PostgreSQL as one other character (U+1F600 here).
        (
            {"s": "\ud83d\ude00"},
            r"s: contains the surrogate code point \ud83d, which the ledger cannot store",
        ),
        ({"o": {"\udc80": 1}}, r'o: the key "\udc80" contains the surrogate code point \udc80'),
        ({"f": math.nan}, "f: is NaN, not a JSON number, which the ledger cannot store"),
        ({"f": [math.inf]}, "f.0: is Infinity, not a JSON number, which the ledger cannot store"),
        ({"f": -math.inf}, "f: is -Infinity, not a JSON number, which the ledger cannot store"),
        (
            {"n": HUGE},
            f"n: is an integer of more than {MAX_INT_DIGITS} digits, which the ledger cannot store",
        ),
        ({"n": -HUGE}, f"n: is an integer of more than {MAX_INT_DIGITS} digits"),
        ({"x": {1, 2}}, "x: a value of type set is not JSON"),
        # A path segment that would break the line is shown escaped.
        ({"a\nb": {"c": "\x00"}}, r"a\u000ab.c: contains a NUL character"),
    ],
)
def test_names_the_path_and_the_reason(value, problem):
    found = unstorable(value)
    assert found is not None
    assert found.startswith(problem)


@pytest.mark.parametrize(
    "value",
    [
        {"message": "hello"},
        {"emoji": "😀", "hangul": "한국어", "max": "\U0010ffff", "nonchar": "\uffff"},
        {"text": "\\u0000 is six characters", "word": "NaN and Infinity are words"},
        {"n": HUGE - 1, "m": -(HUGE - 1), "f": 1e308, "z": -0.0, "t": 5e-324},
        {1: "int keys are written as strings", None: "so is None"},
        [],
        None,
    ],
)
def test_storable_values_pass(value):
    assert unstorable(value) is None
    assert escaped(value) is value


def test_root_names_a_value_that_is_not_in_a_payload():
    assert unstorable("q\x00", root="queue") == (
        r"queue: contains a NUL character (\u0000), which the ledger cannot store"
    )


def test_the_common_case_is_screened_on_the_json_text_without_a_walk(monkeypatch):
    def walk(*args, **kwargs):
        raise AssertionError("walked a payload whose JSON text holds no suspect")

    payload = {"url": "https://example.com/hook", "body": {"items": [{"n": n} for n in range(50)]}}
    monkeypatch.setattr(jsonsafe, "_walk", walk)
    assert unstorable(payload, text=json.dumps(payload)) is None
    assert unstorable(payload) is None


def test_a_raised_int_digit_limit_makes_the_screen_walk(monkeypatch):
    monkeypatch.setattr(sys, "get_int_max_str_digits", lambda: 0)  # json.dumps would write HUGE
    assert unstorable({"n": HUGE}, text='{"n": 1}') is not None


def test_escaped_is_a_storable_copy_with_visible_escapes():
    value = {"a\x00": ["x\ud800y", math.nan, math.inf, -math.inf, HUGE, 1, "ok"], "b": {"c": "\udfff"}}
    copy = escaped(value)
    assert copy == {
        "a\\u0000": [
            "x\\ud800y",
            "NaN",
            "Infinity",
            "-Infinity",
            f"<an integer of more than {MAX_INT_DIGITS} digits>",
            1,
            "ok",
        ],
        "b": {"c": "\\udfff"},
    }
    assert unstorable(copy) is None
    assert value["b"] == {"c": "\udfff"}  # the original is left alone


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"message": "pong"},
        {"é": ["\u0000", "\ud800", 'tab\tquote"backslash\\', 1, -2.5, 1e300, None, True, False]},
        {"nested": {"list": [[], {}, [1, [2, [3]]]], "big": 10**40}},
        [1, "two", {"3": 4}],
        "text",
        12,
    ],
)
def test_compact_is_json_dumps_compact(value):
    assert jsonsafe.compact(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("value", [{"x": math.nan}, {"x": [math.inf]}, {"x": -math.inf}])
def test_compact_refuses_what_json_dumps_refuses(value):
    with pytest.raises(ValueError, match="not JSON compliant"):
        json.dumps(value, allow_nan=False)
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsonsafe.compact(value)
    # Refusing leaves nothing behind: the next value encodes as before.
    assert jsonsafe.compact({"after": 1}) == '{"after":1}'


def test_compact_refuses_an_integer_too_long_to_write_and_an_object():
    with pytest.raises(ValueError, match="Exceeds the limit"):
        jsonsafe.compact({"n": 10 ** (sys.get_int_max_str_digits() + 1)})
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonsafe.compact({"o": object()})
