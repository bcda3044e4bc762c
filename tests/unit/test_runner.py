"""The attempt's pure parts: which error a failed attempt is recorded as."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from workers.runner import _soft_limit

pytestmark = pytest.mark.unit


class DriverError(Exception):
    """What a database driver raises when a signal interrupts its wait."""


def test_a_soft_time_limit_is_found_inside_the_error_of_the_call_it_interrupted():
    limit = SoftTimeLimitExceeded()
    wrapped = DriverError("consuming input failed")
    wrapped.__context__ = limit  # as Python sets it when the driver raises while handling the limit
    assert _soft_limit(wrapped) is limit
    assert _soft_limit(DriverError("outer").with_traceback(None)) is None
    caused = DriverError("caused")
    caused.__cause__ = wrapped
    assert _soft_limit(caused) is limit
    assert _soft_limit(limit) is limit
    assert _soft_limit(DriverError("no limit here")) is None
