"""A workflow from its spec: the JSON or YAML shape ``jobs workflow submit FILE`` reads
(docs/workflows.md, "The spec")::

    name: diamond
    steps:
      - {name: a, kind: http.post, payload: {url: "https://example.com/a"}}
      - {name: b, kind: http.post, payload: {url: "https://example.com/b"}, after: [a]}
      - {name: c, kind: http.post, payload: {url: "https://example.com/c"}, after: [a]}
      - name: d
        kind: http.post
        payload: {url: "https://example.com/d"}
        after: [b, {step: c, when: finished}]
        inputs: {body.from_b: b.body, body.from_c: c.body}

``steps`` may also map each step's name to the rest. Each step: ``name``, ``kind``,
``payload``, ``after`` (names, or ``{step, when}``), ``inputs``, ``when`` (the default policy of
its dependencies), ``queue``, ``priority``, ``max_attempts``; nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from jobs.errors import InvalidWorkflow
from jobs.workflows.spec import POLICIES, After, Policy, Step, Workflow

__all__ = ["from_spec", "load"]

STEP_FIELDS = ("name", "kind", "payload", "after", "inputs", "when", "queue", "priority", "max_attempts")


def from_spec(spec: Any) -> Workflow:
    """A workflow from a spec's data; ``InvalidWorkflow`` naming the step at fault."""
    if not isinstance(spec, Mapping):
        raise InvalidWorkflow("a workflow spec is an object with 'name' and 'steps'")
    unknown = set(spec) - {"name", "steps"}
    if unknown:
        raise InvalidWorkflow(f"a workflow spec has 'name' and 'steps', not {sorted(unknown)[0]!r}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise InvalidWorkflow("a workflow spec needs a 'name' (text)")
    raw = spec.get("steps")
    if isinstance(raw, Mapping):
        items = [
            {"name": key, **value} if isinstance(value, Mapping) else {"name": key, "kind": value}
            for key, value in raw.items()
        ]
    elif isinstance(raw, list):
        items = raw
    else:
        raise InvalidWorkflow(f"workflow {name!r}: 'steps' is a list of steps")
    flow = Workflow(name)
    for number, item in enumerate(items, start=1):
        flow.add(_step(number, item))
    return flow


def _step(number: int, item: Any) -> Step:
    label = f"step {number}"
    if not isinstance(item, Mapping):
        raise InvalidWorkflow(f"{label}: a step is an object with 'name', 'kind' and 'payload'")
    if isinstance(item.get("name"), str):
        label = f"step {item['name']!r}"
    unknown = set(item) - set(STEP_FIELDS)
    if unknown:
        raise InvalidWorkflow(
            f"{label}: unknown field {sorted(unknown)[0]!r} (a step has {', '.join(STEP_FIELDS)})"
        )
    name, kind = item.get("name"), item.get("kind")
    if not isinstance(name, str) or not name or not isinstance(kind, str) or not kind:
        raise InvalidWorkflow(f"{label}: a step needs a 'name' and a 'kind'")
    payload = item.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise InvalidWorkflow(f"{label}: 'payload' is an object")
    after = item.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list):
        raise InvalidWorkflow(f"{label}: 'after' is a list of step names")
    inputs = item.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        raise InvalidWorkflow(f"{label}: 'inputs' maps payload fields to references like 'a.total'")
    when = _policy(label, item.get("when", "succeeded"))
    options = _options(label, item)
    return Step(
        kind,
        payload,
        name,
        [_dependency(label, entry, when) for entry in after],
        inputs,
        when,
        options["queue"],
        options["priority"],
        options["max_attempts"],
    )


def _policy(label: str, when: Any) -> Policy:
    if when not in POLICIES:
        raise InvalidWorkflow(f"{label}: 'when' is 'succeeded' or 'finished', not {when!r}")
    return cast("Policy", when)


def _dependency(label: str, entry: Any, when: Policy) -> After:
    if isinstance(entry, str):
        return After(entry, when)
    if isinstance(entry, Mapping) and isinstance(entry.get("step"), str) and set(entry) <= {"step", "when"}:
        return After(entry["step"], _policy(label, entry.get("when", when)))
    raise InvalidWorkflow(
        f"{label}: a dependency is a step name or {{step: NAME, when: succeeded | finished}}, not {entry!r}"
    )


def _options(label: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """A spec step's queue, priority and attempts, checked for their types."""
    options = {key: item.get(key) for key in ("queue", "priority", "max_attempts")}
    if options["queue"] is not None and not isinstance(options["queue"], str):
        raise InvalidWorkflow(f"{label}: 'queue' is a queue name")
    for key in ("priority", "max_attempts"):
        value = options[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidWorkflow(f"{label}: {key!r} is a whole number")
    return options


def load(path: str | Path, text: str | None = None) -> Workflow:
    """A workflow from a JSON or YAML spec file (``text``: its content, already read)."""
    source = Path(path)
    if text is None:
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidWorkflow(f"cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise InvalidWorkflow(f"{path} is not UTF-8 text") from None
    if source.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidWorkflow(f"{path}: not valid JSON: {error.msg} at line {error.lineno}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InvalidWorkflow(f"{path}: not valid YAML{where}") from None
    return from_spec(data)
