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
