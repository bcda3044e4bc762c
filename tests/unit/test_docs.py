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


def test_the_readme_workflow_spec_passes_its_checks():
    """The spec of the README's "Workflows" section is one ``jobs workflow submit`` accepts."""
    import yaml

    from jobs.catalog import load_kinds
    from jobs.workflows import from_spec

    section = README.split("## Workflows", 1)[1].split("\n## ", 1)[0]
    spec = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert spec is not None, "the README's Workflows section has no yaml block"
    plan = from_spec(yaml.safe_load(spec.group(1))).plan(load_kinds([]))
    assert [step.name for step in plan.steps] == ["extract", "enrich", "audit", "publish", "notify"]
    assert "jobs workflow submit nightly.yaml" in section


def test_the_workflow_docs_spec_passes_its_checks():
    """The spec of docs/workflows.md, "The spec", is one ``jobs workflow submit`` accepts."""
    import yaml

    from jobs.catalog import load_kinds
    from jobs.workflows import from_spec

    text = (ROOT / "docs" / "workflows.md").read_text(encoding="utf-8")
    section = text.split("## The spec", 1)[1].split("\n## ", 1)[0]
    spec = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert spec is not None, "docs/workflows.md's spec section has no yaml block"
    plan = from_spec(yaml.safe_load(spec.group(1))).plan(load_kinds([]))
    assert [(step.name, [parent.step for parent in step.parents]) for step in plan.steps] == [
        ("a", []),
        ("b", ["a"]),
        ("c", ["a"]),
        ("d", ["b", "c"]),
    ]
