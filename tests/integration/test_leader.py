"""Leader election through a PostgreSQL advisory lock."""

from __future__ import annotations

import pytest

from beat.leader import Leadership, current_leader
from jobs import db

pytestmark = pytest.mark.integration


def test_one_leads_the_other_waits_then_takes_over(ledger_db):
    first, second = Leadership(ledger_db), Leadership(ledger_db)
    try:
        assert first.ensure()
        assert not second.ensure()
        assert first.ensure()  # still leading
        with db.transaction(ledger_db) as conn:
            assert current_leader(conn) == first.identity
        first.release()
        assert second.ensure()
        with db.transaction(ledger_db) as conn:
            assert current_leader(conn) == second.identity
    finally:
        first.release()
        second.release()


def test_leader_whose_connection_dies_loses_the_lock(ledger_db):
    first, second = Leadership(ledger_db), Leadership(ledger_db)
    try:
        assert first.ensure()
        with db.transaction(ledger_db) as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %(name)s",
                {"name": first.identity},
            )
        assert not first.ensure()  # notices the lost connection instead of believing it leads
        assert second.ensure()
    finally:
        first.release()
        second.release()
