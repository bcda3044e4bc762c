"""Helpers for the tests of projects that use the platform (and for the platform's own tests)."""

from __future__ import annotations

from jobs import app, db, settings

__all__ = ["reset"]


def reset() -> None:
    """Forget the process-wide settings, app, producer, list of limited kinds and database pools.

    Call it after changing ``JOBS_*`` variables in a test, so the next use
    reads them again.
    """
    from jobs import ledger, producer
    from jobs.cli import context

    settings.get_settings.cache_clear()
    app.get_app.cache_clear()
    context.registry.cache_clear()
    context.producer.cache_clear()
    producer._default = None
    ledger.forget_targets()
    db.dispose()
