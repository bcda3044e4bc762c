"""The public surface is explicit: this test fails when it drifts."""

from __future__ import annotations

import importlib

import pytest

import jobs

pytestmark = pytest.mark.unit

PUBLIC = {
    "Backoff",
    "BadInput",
    "BrokerUnavailable",
    "ConfigError",
    "Debounce",
    "DuplicateKind",
    "Fail",
    "IdempotencyConflict",
    "InfrastructureError",
    "InvalidJobOptions",
    "InvalidLimit",
    "InvalidPayload",
    "InvalidTransition",
    "InvalidWorkflow",
    "JobContext",
    "JobId",
    "JobNotFound",
    "JobsError",
    "Kind",
    "LedgerUnavailable",
    "Limit",
    "LimitNotFound",
    "PayloadTooLarge",
    "Producer",
    "RetryLater",
    "Settings",
    "Step",
    "Unique",
    "UnknownKind",
    "Workflow",
    "WorkflowId",
    "WorkflowNotFound",
    "chain",
    "chord",
    "group",
    "submit_canvas",
    "submit_workflow",
    "declare",
    "get_settings",
    "kind",
    "load_settings",
    "registry",
    "submit",
    "submit_many",
}


def test_package_exports_exactly_the_public_names():
    assert set(jobs.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(jobs, name) is not None


@pytest.mark.parametrize(
    "module",
    [
        "jobs.backoff",
        "jobs.context",
        "jobs.errors",
        "jobs.kinds",
        "jobs.ledger",
        "jobs.producer",
        "jobs.settings",
        "jobs.publisher",
        "jobs.lookup",
        "jobs.control",
        "jobs.db",
        "jobs.migrate",
        "jobs.durations",
        "jobs.jsonsafe",
        "jobs.states",
        "jobs.maintenance_runs",
        "jobs.schedules",
        "jobs.schedules.timing",
        "jobs.schedules.policies",
        "jobs.schedules.spec",
        "jobs.schedules.display",
        "jobs.schedules.firings",
        "jobs.schedules.store",
    ],
)
def test_every_module_declares_all(module):
    loaded = importlib.import_module(module)
    assert loaded.__all__, module
    for name in loaded.__all__:
        assert hasattr(loaded, name), f"{module}.{name}"


def test_exception_tree_maps_to_exit_codes():
    assert issubclass(jobs.InvalidPayload, jobs.BadInput)
    assert issubclass(jobs.IdempotencyConflict, jobs.BadInput)
    assert issubclass(jobs.LedgerUnavailable, jobs.InfrastructureError)
    assert jobs.BadInput.exit_code == 2
    assert jobs.InfrastructureError.exit_code == 3
    assert jobs.UnknownKind().message == "No job kind is registered under that name."
