"""The code's transition table is the drawing in jobs.ledger.lifecycle and in docs/architecture.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs import ledger
from jobs.ledger import lifecycle
from jobs.schema import STATES, TERMINAL_STATES

pytestmark = pytest.mark.unit

EDGE = re.compile(r"^\s*(\w+) --(\w+)--> (\w+)\b", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[2]


def edges(text: str) -> set[tuple[str, str, str]]:
    return {(source, event, target) for source, event, target in EDGE.findall(text)}


def test_docstring_lists_exactly_the_transitions():
    assert lifecycle.__doc__ is not None
    assert edges(lifecycle.__doc__) == ledger.TRANSITIONS


def test_architecture_doc_lists_exactly_the_transitions():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert edges(text) == ledger.TRANSITIONS


def test_terminal_states_are_never_left():
    assert not {source for source, _, _ in ledger.TRANSITIONS} & set(TERMINAL_STATES)


def test_every_state_is_reachable_and_known():
    targets = {target for _, _, target in ledger.TRANSITIONS}
    assert set(STATES) - targets == {"scheduled"}  # entered only by submit
    assert {s for s, _, _ in ledger.TRANSITIONS} | targets <= set(STATES)


def test_sources_follow_the_table():
    assert ledger.sources("cancel") == ("held", "queued", "retrying", "running", "scheduled")
    assert ledger.sources("admit") == ("held",)
    assert ledger.sources("stage") == ("retrying", "scheduled")
    with pytest.raises(KeyError):
        ledger.sources("explode")
