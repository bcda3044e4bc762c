"""A workflow step's inputs: fields of its payload taken from its parents' results (docs/workflows.md).

A step declares ``inputs``, a mapping from a field of its payload (a dotted path: ``body.total``)
to a reference to its parents' results:

- ``"b"`` or ``"b.path.to.value"``: the result of parent step ``b`` (or a value inside it);
- ``"^"`` or ``"^.path"``: the result of the step's only parent (a chain's previous step);
- ``"*"`` or ``"*.path"``: the list of every parent's result, in the order of ``after`` (a
  fan-in's results);
- a list of references: the list of their values.

A path's parts are keys, or list indexes when they are digits. A parent that did not succeed (a
step that runs after its parents whatever their outcome) has no result: its value is ``None``.
References are checked when the workflow is submitted (``check``) and resolved when the step is
released (``resolve``), where the payload is then validated against the step's kind.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Parent",
    "Ref",
    "UnresolvedInput",
    "check",
    "fields_of",
    "parse",
    "refs",
    "resolve",
    "set_field",
    "source_of",
    "valid_step_name",
]

_STEP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:-]*$")
_PART = re.compile(r"^[^.\s]+$")


class UnresolvedInput(ValueError):
    """An input cannot be resolved: the message names the field and the parent."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference: ``source`` is a step name, ``^`` (the only parent) or ``*`` (every parent)."""

    source: str
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ".".join((self.source, *self.path))


@dataclass(frozen=True, slots=True)
class Parent:
    """A parent as its child sees it when released: its step, its terminal state, its result."""

    step: str
    state: str
    result: Any


def valid_step_name(name: str) -> bool:
    return bool(_STEP.match(name)) and len(name) <= 200


def parse(text: str) -> Ref:
    """One reference's text as a ``Ref``; ``ValueError`` saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a reference is a step name with an optional path, not {text!r}")
    source, *path = text.split(".")
    if source not in ("*", "^") and not valid_step_name(source):
        raise ValueError(f"{text!r} does not start with a step name, '^' or '*'")
    if any(not _PART.match(part) for part in path):
        raise ValueError(f"{text!r} has an empty part in its path")
    return Ref(source, tuple(path))


def refs(value: Any) -> list[Ref]:
    """The references of one input (a reference or a list of them)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("a list of references cannot be empty")
        return [parse(item) for item in value]
    return [parse(value)]


def fields_of(inputs: Mapping[str, Any]) -> list[str]:
    """The payload fields the inputs fill (dotted paths)."""
    return list(inputs)


def check(inputs: Mapping[str, Any], parents: Sequence[str]) -> None:
    """Check a step's inputs against its parents' names; ``ValueError`` naming the field."""
    for field, value in inputs.items():
        if not isinstance(field, str) or not field or any(not _PART.match(part) for part in field.split(".")):
            raise ValueError(f"input field {field!r} is not a field path like 'body' or 'body.total'")
        try:
            found = refs(value)
        except ValueError as error:
            raise ValueError(f"input {field!r}: {error}") from None
        for ref in found:
            if ref.source == "^" and len(parents) != 1:
                raise ValueError(
                    f"input {field!r}: '^' means the only parent, and the step has {len(parents)}"
                )
            if ref.source == "*" and not parents:
                raise ValueError(f"input {field!r}: '*' means every parent, and the step has none")
            if ref.source not in ("*", "^") and ref.source not in parents:
                raise ValueError(
                    f"input {field!r} takes the result of step {ref.source!r}, which the step does not "
                    "come after: add it to 'after'"
                )
    fields = sorted(inputs)
    for shorter, longer in itertools.pairwise(fields):
        if longer.startswith(shorter + "."):
            raise ValueError(f"inputs {shorter!r} and {longer!r} overlap")


def _dig(value: Any, path: tuple[str, ...], *, field: str, ref: Ref, step: str) -> Any:
    for depth, part in enumerate(path):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            where = ".".join(path[:depth]) or "its result"
            raise UnresolvedInput(
                f"input {field!r} ({ref}): the result of step {step!r} has no {part!r} at {where}"
            )
    return value


def _value(ref: Ref, parents: Sequence[Parent], field: str) -> Any:
    if ref.source == "*":
        return [_one(parent, ref, field) for parent in parents]
    if ref.source == "^":
        if len(parents) != 1:
            raise UnresolvedInput(f"input {field!r} ({ref}): the step has {len(parents)} parents, not one")
        return _one(parents[0], ref, field)
    for parent in parents:
        if parent.step == ref.source:
            return _one(parent, ref, field)
    raise UnresolvedInput(f"input {field!r} ({ref}): step {ref.source!r} is not a parent of this step")


def _one(parent: Parent, ref: Ref, field: str) -> Any:
    if parent.state != "succeeded":
        return None
    return _dig(parent.result, ref.path, field=field, ref=ref, step=parent.step)


def resolve(inputs: Mapping[str, Any], parents: Sequence[Parent]) -> dict[str, Any]:
    """Each input field's value from the parents' results; ``UnresolvedInput`` naming the field."""
    found: dict[str, Any] = {}
    for field, value in inputs.items():
        if isinstance(value, list):
            found[field] = [_value(parse(item), parents, field) for item in value]
        else:
            found[field] = _value(parse(value), parents, field)
    return found


def set_field(payload: dict[str, Any], field: str, value: Any) -> None:
    """Set a dotted field of a payload, making the objects on its way."""
    *head, last = field.split(".")
    target = payload
    for part in head:
        nested = target.get(part)
        if not isinstance(nested, dict):
            nested = {}
            target[part] = nested
        target = nested
    target[last] = value


def source_of(inputs: Mapping[str, Any], loc: Sequence[str | int]) -> tuple[str, str] | None:
    """Which input (field, reference text) supplied the payload location ``loc`` of a validation
    error, if one did."""
    dotted = ".".join(str(part) for part in loc)
    for field, value in inputs.items():
        if dotted == field or dotted.startswith(field + "."):
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            return field, shown
    return None
