"""Fault scenarios share one private platform (servers, ledger, a worker and a leader) per session.

Each scenario starts from an empty ledger and empty queues with the standard
fleet running (a scenario that killed a process gets a new one), and ends
with the checker: the scenario fails if any promise is broken.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Platform, private_platform


@pytest.fixture(scope="session")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from private_platform(tmp_path_factory.mktemp("faults"))


@pytest.fixture
def faults(private: Platform) -> Iterator[Platform]:
    """The private platform, reset for one scenario; the checker runs when the scenario ends."""
    private.heal()
    private.ensure()
    private.reset()
    yield private
    report = private.settle_and_check(timeout=60)
    assert report.ok, f"the checker found broken promises:\n{report.describe()}"
