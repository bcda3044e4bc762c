from __future__ import annotations

import pytest

from jobs.backoff import Backoff, Decision, decide
from jobs.errors import Fail, RetryLater

pytestmark = pytest.mark.unit


def test_grows_exponentially_without_jitter():
    policy = Backoff(base=1.0, factor=2.0, maximum=100.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_is_bounded_by_maximum_even_with_jitter():
    policy = Backoff(base=10.0, factor=3.0, maximum=60.0, jitter=0.5)
    assert policy.delay(50, rand=lambda: 1.0) == 60.0
    assert policy.delay(10_000, rand=lambda: 0.5) == 60.0


def test_jitter_spreads_around_the_raw_delay():
    policy = Backoff(base=8.0, factor=2.0, maximum=1000.0, jitter=0.25)
    assert policy.delay(1, rand=lambda: 0.0) == pytest.approx(6.0)
    assert policy.delay(1, rand=lambda: 0.5) == pytest.approx(8.0)
    assert policy.delay(1, rand=lambda: 1.0) == pytest.approx(10.0)


def test_real_randomness_stays_in_range():
    policy = Backoff(base=2.0, factor=2.0, maximum=30.0, jitter=0.25)
    delays = {policy.delay(3) for _ in range(200)}
    assert all(6.0 <= d <= 10.0 for d in delays)
    assert len(delays) > 1


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"maximum": -2}])
def test_refuses_nonsense(kwargs):
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**kwargs)


class Boom(Exception):
    pass


class Ticked(Exception):
    pass


def decided(error: BaseException, attempt: int = 1, max_attempts: int = 3, **policy) -> Decision:
    return decide(
        error, attempt=attempt, max_attempts=max_attempts, backoff=Backoff(base=2, jitter=0), **policy
    )


def test_an_error_is_retried_after_the_backoff_while_attempts_remain():
    assert decided(Boom(), attempt=1) == Decision(retry=True, delay=2.0)
    assert decided(Boom(), attempt=2) == Decision(retry=True, delay=4.0)
    assert decided(Boom(), attempt=3) == Decision(retry=False)


def test_fail_ends_the_job_and_retry_later_asks_for_its_own_delay():
    assert decided(Fail("no")) == Decision(retry=False)
    assert decided(RetryLater(30)) == Decision(retry=True, delay=30.0)
    assert decided(RetryLater()) == Decision(retry=True, delay=2.0)
    assert decided(RetryLater(-5)) == Decision(retry=True, delay=0.0)
    assert decided(RetryLater(30), attempt=3) == Decision(retry=False)  # never past max_attempts


def test_the_kinds_retry_on_decides_for_other_errors_and_always_overrides_it():
    assert decided(Boom(), retry_on=(KeyError,)) == Decision(retry=False)
    assert decided(KeyError("k"), retry_on=(KeyError,)).retry
    assert decided(Ticked(), retry_on=(KeyError,), always=(Ticked,)).retry
    assert decided(RetryLater(1), retry_on=(KeyError,)).retry  # a body's own signal is always heard
