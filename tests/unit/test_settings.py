from __future__ import annotations

import pytest

from jobs.errors import ConfigError
from jobs.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def test_defaults_point_at_localhost(monkeypatch):
    for name in (
        "JOBS_DATABASE_URL",
        "JOBS_BROKER_URL",
        "JOBS_VISIBILITY_TIMEOUT",
        "JOBS_HARD_TIME_LIMIT",
        "JOBS_SOFT_TIME_LIMIT",
        "JOBS_LEASE_MARGIN",
        "JOBS_KIND_MODULES",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/jobs"
    assert settings.broker_url == "redis://127.0.0.1:6379/5"
    assert settings.max_payload_bytes == 1024 * 1024
    assert settings.lease_seconds == settings.hard_time_limit + settings.lease_margin


def test_reads_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("JOBS_DEFAULT_QUEUE=from-dotenv\nJOBS_KIND_MODULES=a.b, c\n")
    monkeypatch.delenv("JOBS_KIND_MODULES", raising=False)
    monkeypatch.setenv("JOBS_DATABASE_URL", "postgresql://u:p@db:5432/prod")
    settings = load_settings()
    assert settings.default_queue == "from-dotenv"
    assert settings.kind_modules == ["a.b", "c"]
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/prod"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JOBS_VISIBILITY_TIMEOUT", "abc", "JOBS_VISIBILITY_TIMEOUT=abc: Input should be a valid number"),
        ("JOBS_VISIBILITY_TIMEOUT", "10", "JOBS_VISIBILITY_TIMEOUT must exceed JOBS_HARD_TIME_LIMIT"),
        ("JOBS_DATABASE_URL", "mysql://x/y", "JOBS_DATABASE_URL=mysql://x/y: must be a postgresql:// URL"),
        ("JOBS_BROKER_URL", "amqp://x", "JOBS_BROKER_URL=amqp://x: must be a redis:// or rediss:// URL"),
        ("JOBS_BROKER_URL", "rediss://h:6380/1", "add ?ssl_cert_reqs=required"),
        ("JOBS_MAX_ATTEMPTS", "0", "JOBS_MAX_ATTEMPTS=0: Input should be greater than or equal to 1"),
        ("JOBS_SOFT_TIME_LIMIT", "400", "JOBS_SOFT_TIME_LIMIT must be below JOBS_HARD_TIME_LIMIT"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in caught.value.message
    assert "\n" not in caught.value.message
