"""Under pytest-xdist, the tests that share state run in one process (tests.support.scheduling)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.fixtures import ROOT
from tests.support.scheduling import unit_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("nodeid", "unit"),
    [
        ("tests/faults/test_broker.py::test_09_redis_restarted", "tests/faults/"),
        ("tests/faults/test_workers.py::test_01[x]", "tests/faults/"),
        ("tests/acceptance/test_doctor.py::test_no_leader", "tests/acceptance/test_doctor.py"),
        ("tests/acceptance/test_doctor.py::test_settings[a::b]", "tests/acceptance/test_doctor.py"),
        ("tests/integration/test_claim.py::test_one", "tests/integration/test_claim.py::test_one"),
        ("tests/unit/test_kinds.py::test_two[1]", "tests/unit/test_kinds.py::test_two[1]"),
    ],
)
def test_units_follow_shared_state(nodeid, unit):
    assert unit_of(nodeid) == unit


def test_a_parallel_run_keeps_each_unit_in_one_process(tmp_path: Path):
    """A real ``pytest -n 3`` over a small tree laid out like ours, with our scheduler."""
    files = {
        "tests/faults/test_one.py": 4,
        "tests/faults/test_two.py": 4,
        "tests/acceptance/test_three.py": 4,
        "tests/acceptance/test_four.py": 4,
        "tests/unit/test_five.py": 12,
    }
    for name, count in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"def test_{n}():\n    pass\n\n\n" for n in range(count)))
    (tmp_path / "conftest.py").write_text(
        "from tests.support.scheduling import SharedStateScheduling\n\n\n"
        "def pytest_xdist_make_scheduler(config, log):\n"
        "    return SharedStateScheduling(config, log)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadscope", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = re.findall(r"\[(gw\d+)\] \[\s*\d+%\] PASSED (\S+)", result.stdout)
    assert len(ran) == sum(files.values()), result.stdout[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, nodeid in ran:
        workers[unit_of(nodeid)].add(worker)
    assert len(workers["tests/faults/"]) == 1
    assert len(workers["tests/acceptance/test_three.py"]) == 1
    assert len(workers["tests/acceptance/test_four.py"]) == 1
    assert len({worker for worker, nodeid in ran}) > 1  # and the run is parallel
