"""The README stays true: every setting is documented, and the commands it gives exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    for name in Settings.model_fields:
        assert f"JOBS_{name.upper()}" in README, f"JOBS_{name.upper()} is not documented in README.md"


def test_the_two_setup_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)(?:\s+#|$)", README, re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"make {target} is not a Makefile target"
    assert "make dev" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_architecture_names_every_module():
    """docs/architecture.md names every module of jobs/, workers/ and beat/ (as ``cli.submit``)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for package in ("jobs", "workers", "beat"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT / package).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and f"`{'.'.join(parts)}`" not in text:
                missing.append(f"{package}/{'/'.join(parts)}")
    assert missing == [], f"docs/architecture.md does not name: {missing}"
