"""CLI parsing and bad input: everything here is refused before any server is touched."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jobs.cli.main import cli
from jobs.cli.options import parse_param
from jobs.cli.submit import _payload
from jobs.testing import reset

pytestmark = pytest.mark.unit

# A broker nobody listens on and a database that cannot exist: reaching either would fail loudly.
UNREACHABLE = {
    "JOBS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never_test",
    "JOBS_BROKER_URL": "redis://127.0.0.1:1/9",
}


@pytest.fixture(autouse=True)
def _fresh_settings():
    reset()
    yield
    reset()


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env=UNREACHABLE)


def test_param_values_are_strings_unless_json_objects_or_lists():
    assert parse_param("n=3") == ("n", "3")
    assert parse_param("url=http://x/?a=b") == ("url", "http://x/?a=b")
    assert parse_param('body={"a": 1}') == ("body", {"a": 1})
    assert parse_param("tags=[1,2]") == ("tags", [1, 2])


def test_params_override_the_json_payload():
    assert _payload('{"a": 1, "b": 2}', None, ("b=3",)) == {"a": 1, "b": "3"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "nope"], "unknown job kind 'nope'"),
        (["submit", "ping", "-p", "message"], "'message' is not key=value"),
        (
            ["submit", "ping", "-p", "x=1"],
            "invalid payload for kind 'ping': x: Extra inputs are not permitted",
        ),
        (["submit", "ping", "--payload", "{oops"], "not valid JSON"),
        (["submit", "ping", "--payload", "[1]"], "the payload must be a JSON object"),
        (["submit", "ping", "--delay", "soon"], "'soon' is not a duration"),
        (["submit", "ping", "--at", "tomorrow"], "is not an ISO 8601 time"),
        (["submit", "ping", "--priority", "12"], "12 is not in the range 0<=x<=9"),
        (["submit", "ping", "--at", "2030-01-01T00:00:00"], "a time must include its UTC offset"),
        (["submit", "http.post", "-p", "url=ftp://x/y"], "url: URL scheme should be 'http' or 'https'"),
        (["status", "not-a-uuid"], "'not-a-uuid' is not a job id"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_oversized_payload_is_refused_before_the_ledger(monkeypatch):
    result = CliRunner().invoke(
        cli,
        ["submit", "ping", "-p", "message=" + "x" * 150],
        env={**UNREACHABLE, "JOBS_MAX_PAYLOAD_BYTES": "100"},
    )
    assert result.exit_code == 2
    assert "over the limit of 100 bytes" in result.output


def test_unreachable_ledger_exits_3_naming_the_url():
    result = run("submit", "ping")
    assert result.exit_code == 3, result.output
    assert "PostgreSQL is unreachable at postgresql+psycopg://nobody@127.0.0.1:1/never_test" in result.output
    assert "Traceback" not in result.output


def test_invalid_setting_exits_2_naming_the_variable():
    result = CliRunner().invoke(cli, ["kinds"], env={"JOBS_VISIBILITY_TIMEOUT": "-1"})
    assert result.exit_code == 2
    assert "JOBS_VISIBILITY_TIMEOUT" in result.output


def test_kinds_lists_the_builtins_and_shows_a_schema():
    listing = run("kinds", "--json")
    assert listing.exit_code == 0
    names = {k["name"] for k in json.loads(listing.output)}
    assert {"ping", "http.post", "pg.refresh_materialized_view", "pg.vacuum_analyze"} <= names
    shown = run("kinds", "show", "http.post", "--json")
    info = json.loads(shown.output)
    assert info["payload_schema"]["required"] == ["url"]
    assert info["max_attempts"] == 5
    assert run("kinds", "show", "nope").exit_code == 2


def test_flower_refuses_to_start_without_credentials():
    result = run("flower")
    assert result.exit_code == 2
    assert "Flower needs JOBS_FLOWER_USER and JOBS_FLOWER_PASSWORD" in result.output
    reset()
    exposed = CliRunner().invoke(
        cli, ["flower", "--no-auth"], env={**UNREACHABLE, "JOBS_FLOWER_ADDRESS": "0.0.0.0"}
    )
    assert exposed.exit_code == 2
    assert "only allowed on a loopback address" in exposed.output


def test_from_file_gives_the_garbage_collector_back_however_it_ends(tmp_path):
    """``--from-file`` pauses the cyclic collector for its load, and only for it: run in another
    program's process (here click's runner), the collector is on again after an error exit."""
    import gc

    bad = tmp_path / "jobs.jsonl"
    bad.write_text('{"message": "ok"}\nnot json\n', encoding="utf-8")
    assert gc.isenabled()
    result = run("submit", "ping", "--from-file", str(bad))
    assert result.exit_code == 2
    assert "line 2: not valid JSON" in result.output
    assert gc.isenabled()
