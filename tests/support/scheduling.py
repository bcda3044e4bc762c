"""Which tests run in the same test process when ``make test`` runs them in parallel (pytest-xdist).

pytest-xdist hands out units of work to its processes; a unit runs in one
process, in collection order. The units follow what tests share:

- every fault scenario (``tests/faults/``) is in one unit: they share one private
  platform (a redis-server, a PostgreSQL, a worker and a leader) per process, and
  their recovery timings are measured one scenario at a time;
- an acceptance module (``tests/acceptance/test_x.py``) is one unit: its
  module-scoped worker and leader processes start once, and its tests run in the
  module's order (some stop those processes on purpose);
- every other test is a unit of its own, run wherever a process is free.

The larger units are handed out first (xdist's ``--loadscope-reorder``, on by
default), so that the longest ones do not start last.

(pytest-xdist's ``--dist loadgroup`` with ``xdist_group`` marks would say the
same, but it silently stopped grouping with pytest 9.2: pytest-dev/pytest-xdist#1386.)
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

__all__ = ["SharedStateScheduling", "unit_of"]

FAULTS = "tests/faults/"
ACCEPTANCE = "tests/acceptance/"


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to, from its node id."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(FAULTS):
        return FAULTS
    if path.startswith(ACCEPTANCE):
        return path
    return nodeid


class SharedStateScheduling(LoadScopeScheduling):
    """``--dist loadscope`` whose scopes are ``unit_of`` each test."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)
