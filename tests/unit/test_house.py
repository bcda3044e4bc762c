"""House rules the code keeps: small modules (one concept each)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400  # lines; a module past this is usually two concepts (docs/architecture.md, "Packages")


def test_no_source_module_is_over_the_limit():
    long = {
        path.relative_to(ROOT).as_posix(): lines
        for package in ("jobs", "workers", "beat")
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert long == {}, f"split these modules (over {LIMIT} lines): {long}"
