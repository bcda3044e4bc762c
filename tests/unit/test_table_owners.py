"""One owner per table: only the table's store writes it (a scan of the source, no database)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "beat", "workers")

#: Each table, and the one module (or package, ending in ``/``) allowed to write it.
OWNERS = {
    "jobs": "jobs/ledger/",
    "job_attempts": "jobs/ledger/",
    "schedules": "jobs/schedules/store.py",
    "maintenance_runs": "jobs/maintenance_runs.py",
    "queue_pauses": "jobs/pauses.py",
    "workers": "jobs/roster.py",
    "fleet_kinds": "jobs/roster.py",
    "counters": "jobs/counters.py",
    "broker_epochs": "beat/redrive.py",
    "limits": "jobs/limit_store.py",
}


def writes(table: str) -> re.Pattern[str]:
    """What a statement writing ``table`` looks like in the source.

    SQLAlchemy's ``insert(t``, ``pg_insert(t``, ``update(t``, ``delete(t`` and
    ``t.insert(`` …; SQL text's ``INSERT INTO t``, ``UPDATE t``, ``DELETE FROM t``
    and ``TRUNCATE … t``.
    """
    name = re.escape(table)
    return re.compile(
        rf"\b(?:pg_)?(?:insert|update|delete)\(\s*{name}\b"
        rf"|\b{name}\s*\.\s*(?:insert|update|delete)\("
        rf"|\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+{name}\b"
        rf"|\bTRUNCATE(?:\s+TABLE)?\s+(?:\w+\s*,\s*)*{name}\b"
    )


def writers(root: Path, table: str) -> list[str]:
    """The modules under ``root``'s packages that write ``table``, with the line of each write."""
    pattern = writes(table)
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(root).as_posix()}:{line}")
    return found


def test_the_scan_finds_each_kind_of_write(tmp_path):
    statements = [
        "sa.insert(schedules).values(name='x')",
        "pg_insert(schedules)",
        "sa.update(\n    schedules\n)",
        "sa.delete(schedules).where(schedules.c.name == 'x')",
        "schedules.update().values(enabled=False)",
        "conn.execute(sa.text('UPDATE schedules SET enabled = false'))",
        "'INSERT INTO schedules (name) VALUES (1)'",
        "'DELETE FROM schedules'",
        "'TRUNCATE schedules, maintenance_runs'",
    ]
    module = tmp_path / "beat" / "rogue.py"
    module.parent.mkdir()
    module.write_text("\n".join(statements) + "\n", encoding="utf-8")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "reads.py").write_text(
        "sa.select(schedules)\nsa.update(schedules_archive)\n'SELECT name FROM schedules'\n"
        "# schedules update themselves\n",
        encoding="utf-8",
    )
    assert len(writers(tmp_path, "schedules")) == len(statements)
    assert writers(tmp_path, "maintenance_runs") == ["beat/rogue.py:11"]


@pytest.mark.parametrize(("table", "owner"), sorted(OWNERS.items()))
def test_only_the_owner_writes_its_table(table, owner):
    found = writers(ROOT, table)
    owned = owner if owner.endswith("/") else f"{owner}:"
    assert [where for where in found if not where.startswith(owned)] == []
    assert found, f"{owner} should write {table}: has the scan gone blind?"
