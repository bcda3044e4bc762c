"""Property: whatever a caller submits, the ledger ends with a whole job or with nothing.

Hypothesis throws arbitrary JSON at ``Producer.submit`` and ``submit_many``:
strings over the whole code-point range (NUL and surrogates included, in values
and in object keys), nested lists and objects, integers past the 4,300 digits
Python's ``json`` reads back, NaN and the infinities, and odd option texts.
Every call either returns job ids whose rows hold exactly the validated payload,
or raises a ``BadInput`` and adds no row. A refused payload must be one that
PostgreSQL itself would refuse or change, asked directly: the producer refuses
nothing the ledger could store.
"""

from __future__ import annotations

import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc

from jobs import db
from jobs.errors import BadInput, InvalidJobOptions, InvalidPayload, PayloadTooLarge
from jobs.producer import Producer
from jobs.schema import jobs

pytestmark = pytest.mark.integration

KIND = "test.anything"

# Derandomized, so CI runs the same examples every time; no example database on disk.
PROPERTY = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every code point, surrogates (category Cs) included. Drawn uniformly they would almost never
# be NUL or a surrogate, so one string in four has one of those put in on purpose.
ANY_CHARACTER = st.characters(exclude_categories=())
BAD_CHARACTERS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"]
CLEAN_TEXT = st.text(ANY_CHARACTER, max_size=10)
DIRTY_TEXT = st.builds(lambda a, bad, b: a + bad + b, CLEAN_TEXT, st.sampled_from(BAD_CHARACTERS), CLEAN_TEXT)
TEXT = st.one_of(CLEAN_TEXT, CLEAN_TEXT, CLEAN_TEXT, DIRTY_TEXT)
FLOATS = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf])
# Integers around the 4,300 digits Python's json writes and reads at most.
HUGE = st.builds(
    lambda digits, sign: sign * 10 ** (digits - 1), st.integers(4295, 4305), st.sampled_from([1, -1])
)
SCALARS = st.none() | st.booleans() | st.integers() | HUGE | FLOATS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=8,
)
PAYLOADS = st.fixed_dictionaries({}, optional={"value": JSON, "number": FLOATS})
# Mostly no option at all, so that most examples reach the payload's checks.
OPTION_TEXT = st.one_of(*[st.none()] * 4, st.text(ANY_CHARACTER, min_size=1, max_size=8), DIRTY_TEXT)


def normal(value: Any) -> Any:
    """A JSON value with every number as a Decimal: 1e23 and 100000000000000000000000 are one number."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def stored(settings_: Any, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    with db.transaction(settings_) as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.payload).where(jobs.c.id.in_(ids))).all()
    return {row.id: row.payload for row in rows}


def count(settings_: Any) -> int:
    with db.transaction(settings_) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


def ledger_can_store(settings_: Any, value: Any) -> bool:
    """Asked of PostgreSQL itself, not of the code under test: is the value stored unchanged?"""
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        return False  # NaN, infinities, integers json cannot write
    try:
        with db.transaction(settings_) as conn:
            back = conn.execute(
                sa.select(sa.cast(sa.literal(text, sa.Text), jobs.c.payload.type))
            ).scalar_one()
    except sa_exc.DataError:
        return False
    return bool(normal(back) == normal(value))


def text_storable(value: str | None) -> bool:
    return value is None or not any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in value)


def outcome(error: BadInput | None) -> str:
    """What became of an example, for ``--hypothesis-show-statistics``."""
    if error is None:
        return "stored"
    for word in ("NUL", "surrogate", "NaN", "Infinity", "integer", "differs", "kind", "characters"):
        if word in error.message:
            return f"{type(error).__name__}: {word}"
    return type(error).__name__


def expected_payload(producer: Producer, payload: dict[str, Any]) -> Any:
    """The payload as validated and dumped to JSON shape: what the ledger must hold."""
    declared = producer.registry.get(KIND)
    return declared.dump(declared.validate(payload))


def refused_payload(producer: Producer, payload: dict[str, Any]) -> Any:
    """What the producer tried to store: the JSON dump, or the Python one where even that failed."""
    declared = producer.registry.get(KIND)
    try:
        return declared.dump(declared.validate(payload))
    except InvalidPayload:  # pydantic's serializer refuses a surrogate in a key
        return declared.validate(payload).model_dump(mode="python")


@PROPERTY
@given(payload=PAYLOADS, key=OPTION_TEXT, queue=OPTION_TEXT)
def test_submit_stores_the_whole_job_or_refuses_it(producer, payload, key, queue):
    before = count(producer.settings)
    job, error = None, None
    try:
        job = producer.submit(KIND, payload, idempotency_key=key, queue=queue, submitted_by="property")
    except BadInput as caught:
        error = caught
    event(outcome(error))
    if error is not None:
        assert count(producer.settings) == before, f"{error} left a row behind"
        if isinstance(error, InvalidPayload):
            assert not ledger_can_store(producer.settings, refused_payload(producer, payload)), error
        elif isinstance(error, InvalidJobOptions) and "cannot store" in error.message:
            assert not (text_storable(key) and text_storable(queue)), error
        return
    assert job is not None
    assert text_storable(key)
    assert text_storable(queue)
    rows = stored(producer.settings, [job])
    assert job in rows, "a returned id has no row"
    if not job.duplicate:  # a duplicate holds the first payload given with that key
        assert normal(rows[job]) == normal(expected_payload(producer, payload))
    assert count(producer.settings) == before + (0 if job.duplicate else 1)


@PROPERTY
@given(payloads=st.lists(PAYLOADS, min_size=1, max_size=4))
def test_submit_many_stores_all_or_nothing(producer, payloads):
    before = count(producer.settings)
    ids, error = None, None
    try:
        ids = producer.submit_many(KIND, payloads)
    except (InvalidPayload, PayloadTooLarge) as caught:
        error = caught
    event(outcome(error))
    if error is not None:
        assert count(producer.settings) == before, f"{error} left rows behind"
        number = int(error.message.removeprefix("item ").partition(":")[0])
        if isinstance(error, InvalidPayload):
            refused = refused_payload(producer, payloads[number - 1])
            assert not ledger_can_store(producer.settings, refused), error
        return
    assert ids is not None
    rows = stored(producer.settings, ids)
    assert len(ids) == len(payloads) == len(rows)
    for job, payload in zip(ids, payloads, strict=True):
        assert normal(rows[job]) == normal(expected_payload(producer, payload))
    assert count(producer.settings) == before + len(ids)


def test_the_strategies_reach_every_kind_of_unstorable_value():
    """The properties above would pass vacuously if no example held a bad value."""
    quick = settings(database=None, derandomize=True, max_examples=2000)
    find(TEXT, lambda s: "\x00" in s, settings=quick)
    find(TEXT, lambda s: any("\ud800" <= c <= "\udfff" for c in s), settings=quick)
    find(JSON, lambda v: isinstance(v, dict) and any("\x00" in k for k in v), settings=quick)
    find(JSON, lambda v: isinstance(v, int) and abs(v) >= 10**4300, settings=quick)
    find(PAYLOADS, lambda p: p.get("number") != p.get("number"), settings=quick)  # NaN
