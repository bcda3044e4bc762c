"""The in-memory tally and the histogram rebuilt from stored rows (no database)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from jobs import counters
from workers.runner import AttemptFailed


def test_a_tally_counts_and_observes_into_non_cumulative_buckets_and_a_sum():
    tally = counters.Tally()
    tally.attempt_ended("ping", "default", "error", ran=0.3)
    tally.attempt_ended("ping", "default", "succeeded", state="succeeded", ran=0.3)
    tally.observe(counters.QUEUE_WAIT, "ping", "default", 7200.0)  # past the last bound

    taken = tally.take()

    assert taken[counters.ATTEMPTS, "ping", "default", "error", ""] == 1
    assert taken[counters.FINISHED, "ping", "default", "succeeded", ""] == 1
    assert taken[counters.RUN_TIME, "ping", "default", "", "0.5"] == 2
    assert taken[counters.RUN_TIME, "ping", "default", "", "sum"] == 0.6
    assert taken[counters.QUEUE_WAIT, "ping", "default", "", "+Inf"] == 1
    assert len(tally) == 0
    tally.give_back(taken)
    assert tally.take() == taken


def test_stored_buckets_become_cumulative_with_inf_last():
    rows = [
        counters.Row(counters.RUN_TIME, "k", "q", "", "0.5", 2),
        counters.Row(counters.RUN_TIME, "k", "q", "", "0.005", 1),
        counters.Row(counters.RUN_TIME, "k", "q", "", "+Inf", 1),
        counters.Row(counters.RUN_TIME, "k", "q", "", "sum", 4.0),
    ]
    buckets, total = counters.histogram(rows)
    as_dict = dict(buckets)
    assert buckets[-1] == ("+Inf", 4.0)
    assert [bound for bound, _ in buckets[:-1]] == [repr(bound) for bound in counters.BUCKETS]
    assert (as_dict["0.005"], as_dict["0.25"], as_dict["0.5"], as_dict["3600.0"]) == (1, 1, 3, 3)
    assert total == 4.0


def test_an_attempt_outcome_survives_the_trip_from_a_pool_process():
    """Celery wrapped the old AttemptFailed (UnpickleableExceptionWrapper): its args did not
    match its __init__."""
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    failed = AttemptFailed("retrying", "ConnectionError", "not yet", at)
    back = pickle.loads(pickle.dumps(failed))
    assert (back.state, back.error_type, back.message, back.not_before) == (
        "retrying",
        "ConnectionError",
        "not yet",
        at,
    )
    assert repr(back) == "ConnectionError('not yet')"
    assert str(back) == "ConnectionError: not yet"
