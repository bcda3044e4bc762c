"""``jobs dev``'s pieces that need no server: Flower's kept credentials, the command it tells you to run."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from jobs.cli.dev import flower_login, jobs_command
from jobs.settings import Settings

pytestmark = pytest.mark.unit


def settings(flower_user: str | None = None, flower_password: str | None = None) -> Settings:
    password = None if flower_password is None else SecretStr(flower_password)
    return Settings(_env_file=None, flower_user=flower_user, flower_password=password)


def test_the_first_start_makes_credentials_and_keeps_them_for_the_next(tmp_path):
    path = tmp_path / ".flower-dev-credentials"

    first = flower_login(settings(), path)
    again = flower_login(settings(), path)

    assert first.user == "admin"
    assert len(first.password) >= 16
    assert (again.user, again.password) == (first.user, first.password)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "only its owner may read it"
    assert f"JOBS_FLOWER_PASSWORD='{first.password}'" in path.read_text()
    assert "delete it for new ones" in first.source


def test_deleting_the_file_makes_new_credentials(tmp_path):
    path = tmp_path / ".flower-dev-credentials"
    first = flower_login(settings(), path)
    path.unlink()

    assert flower_login(settings(), path).password != first.password


def test_configured_credentials_win_and_nothing_is_written(tmp_path):
    path = tmp_path / ".flower-dev-credentials"

    login = flower_login(settings(flower_user="ops", flower_password="s3cret"), path)

    assert (login.user, login.password) == ("ops", "s3cret")
    assert not path.exists()


def test_any_user_name_survives_the_file(tmp_path):
    path = tmp_path / ".flower-dev-credentials"
    odd = "o'brien \\ #1 = x"
    made = flower_login(settings(flower_user=odd), path)

    kept = flower_login(settings(), path)

    assert (kept.user, kept.password) == (odd, made.password)


def test_a_configured_user_gets_the_kept_password(tmp_path):
    path = tmp_path / ".flower-dev-credentials"
    kept = flower_login(settings(), path)

    login = flower_login(settings(flower_user="me"), path)

    assert (login.user, login.password) == ("me", kept.password)


def test_an_unusable_credentials_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / ".flower-dev-credentials"
    path.write_text("JOBS_FLOWER_USER=admin\n")

    with pytest.raises(SystemExit) as exited:
        flower_login(settings(), path)

    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "delete it" in lines[0]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A virtualenv's bin directory with its ``python`` and ``jobs`` script."""
    bin_dir = tmp_path / "my project" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "jobs"):
        (bin_dir / name).touch(mode=0o755)
    return bin_dir


def test_in_a_virtualenv_the_command_is_the_scripts_absolute_path(venv):
    # `make dev` runs through `uv run`, which puts the virtualenv on PATH for jobs dev only.
    command = jobs_command(str(venv / "python"), in_venv=True, on_path=str(venv / "jobs"))

    assert command == f"'{venv / 'jobs'}'"


def test_outside_a_virtualenv_jobs_on_path_is_used_when_it_is_this_one(venv, tmp_path):
    other = tmp_path / "jobs"
    other.touch(mode=0o755)

    assert jobs_command(str(venv / "python"), in_venv=False, on_path=str(venv / "jobs")) == "jobs"
    assert jobs_command(str(venv / "python"), in_venv=False, on_path=str(other)) == f"'{venv / 'jobs'}'"
    assert jobs_command(str(venv / "python"), in_venv=False, on_path=None) == f"'{venv / 'jobs'}'"


def test_without_a_jobs_script_the_command_is_python_dash_m(tmp_path):
    python = tmp_path / "python"

    assert jobs_command(str(python), in_venv=True, on_path=None) == f"{python} -m jobs"
