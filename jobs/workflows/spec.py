"""What a workflow is before it is submitted: steps, the steps they come after, and the checks a
spec must pass (docs/workflows.md).

Two ways to say one, which build the same thing:

- **named steps**, as a spec file says them (``Workflow.from_spec``) or in Python::

      flow = Workflow("nightly")
      flow.step("a", "reports.extract", {"day": "2026-11-30"})
      flow.step("b", "reports.load", after=["a"], inputs={"rows": "a.rows"})

- **composition**: ``chain`` (one after another), ``group`` (side by side) and ``chord`` (a
  group, then one step after all of it), nested freely; unnamed steps are named after their
  kind (``reports_load-2``)::

      flow = Workflow("fan-in", chord([Step("tiles.render", {"n": n}) for n in range(1000)],
                                      Step("tiles.merge", inputs={"tiles": "*"})))

``Workflow.plan`` checks it against the kinds (every step's kind known, every ``after`` an
existing step, no cycle, inputs naming parents, payloads valid except for the fields their
inputs fill) and raises ``InvalidWorkflow`` naming the step: nothing is created.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import pydantic

from jobs import inputs as step_inputs
from jobs import jsonsafe
from jobs.errors import BadInput, InvalidWorkflow
from jobs.kinds import Kind, Registry

__all__ = [
    "After",
    "Chain",
    "Group",
    "Node",
    "Plan",
    "PlannedStep",
    "Policy",
    "Step",
    "Workflow",
    "chain",
    "chord",
    "group",
]

Policy = Literal["succeeded", "finished"]
POLICIES: tuple[Policy, ...] = ("succeeded", "finished")
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class After:
    """A dependency on ``step`` with its failure policy: ``succeeded`` (the default: if the
    parent fails or is cancelled, this step is cancelled) or ``finished`` (this step runs once
    the parent ends, whatever the outcome: a cleanup or a notification)."""

    step: str
    when: Policy = "succeeded"


@dataclass(eq=False)
class Step:
    """One step: a job of ``kind`` with ``payload``; ``after`` names steps it comes after (besides
    those its place in a chain or chord gives it); ``inputs`` fills payload fields from its
    parents' results (``jobs.inputs``); ``when`` is the policy of its dependencies unless an
    ``After`` says otherwise."""

    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    after: Sequence[str | After] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    when: Policy = "succeeded"
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None


@dataclass(eq=False)
class Chain:
    """Its nodes one after another: each starts after the previous one's last steps."""

    nodes: Sequence[Node]


@dataclass(eq=False)
class Group:
    """Its nodes side by side, all after what the group comes after; what follows the group comes
    after every one of them."""

    nodes: Sequence[Node]


Node = Step | Chain | Group


def chain(*nodes: Node) -> Chain:
    return Chain(list(nodes))


def group(*nodes: Node | Iterable[Node]) -> Group:
    """``group(a, b, c)`` or ``group([a, b, c])``."""
    flat: list[Node] = []
    for node in nodes:
        if isinstance(node, Step | Chain | Group):
            flat.append(node)
        else:
            flat.extend(node)
    return Group(flat)


def chord(header: Group | Iterable[Node], body: Node) -> Chain:
    """A group (``header``), then ``body`` after all of it (a fan-in)."""
    return Chain([header if isinstance(header, Group) else group(header), body])


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A step checked and placed: its name, kind, payload as given, its parents in order."""

    name: str
    kind: Kind
    payload: dict[str, Any]
    parents: tuple[After, ...]
    inputs: dict[str, Any]
    queue: str | None
    priority: int | None
    max_attempts: int | None


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked workflow: its name and its steps, every parent before its children."""

    name: str
    steps: tuple[PlannedStep, ...]


class Workflow:
    """A workflow being built: named steps, and composed nodes placed after them."""

    def __init__(self, name: str, *nodes: Node) -> None:
        self.name = name
        self._steps: dict[str, Step] = {}
        self._order: list[str] = []
        self._edges: dict[str, list[After]] = {}
        self._counts: dict[str, int] = {}
        for node in nodes:
            self.add(node)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def names(self) -> list[str]:
        """The steps' names, in the order they were added."""
        return list(self._order)

    def step(
        self,
        name: str,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        after: Sequence[str | After] = (),
        inputs: Mapping[str, Any] | None = None,
        when: Policy = "succeeded",
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Add a named step; returns its name (to put in another step's ``after``)."""
        step = Step(kind, payload or {}, name, after, inputs or {}, when, queue, priority, max_attempts)
        return self._place(step, [])[0]

    def add(self, node: Node, *, after: Sequence[str | After] = ()) -> list[str]:
        """Add a node (a step, chain or group) after the steps ``after`` (a name takes the policy
        of each step it comes before; an ``After`` keeps its own); returns its last steps."""
        return self._add(
            node, [item if isinstance(item, str) else self._after(item, "succeeded") for item in after]
        )

    def _add(self, node: Node, after: list[str | After]) -> list[str]:
        """Place ``node`` after ``after``: names (from a chain, or given) take the policy of the
        step they come before; ``After`` items keep theirs."""
        if isinstance(node, Step):
            return self._place(node, after)
        if isinstance(node, Chain):
            if not node.nodes:
                raise InvalidWorkflow(f"workflow {self.name!r}: a chain needs at least one step")
            exits = [item if isinstance(item, str) else item.step for item in after]
            current = after
            for child in node.nodes:
                exits = self._add(child, current)
                current = list(exits)
            return exits
        if isinstance(node, Group):
            if not node.nodes:
                raise InvalidWorkflow(f"workflow {self.name!r}: a group needs at least one step")
            return [name for child in node.nodes for name in self._add(child, after)]
        raise InvalidWorkflow(f"workflow {self.name!r}: {node!r} is not a step, chain or group")

    def _after(self, item: str | After | Mapping[str, Any], when: Policy) -> After:
        if isinstance(item, After):
            return item
        if isinstance(item, str):
            return After(item, when)
        if isinstance(item, Mapping):
            step, policy = item.get("step"), item.get("when", when)
            extra = set(item) - {"step", "when"}
            if not isinstance(step, str) or extra:
                raise InvalidWorkflow(
                    f"workflow {self.name!r}: a dependency is a step name or {{'step': NAME, 'when': "
                    f"'succeeded' | 'finished'}}, not {item!r}"
                )
            return After(step, cast("Policy", policy))
        raise InvalidWorkflow(f"workflow {self.name!r}: a dependency is a step name, not {item!r}")

    def _place(self, step: Step, after: list[str | After]) -> list[str]:
        name = step.name if step.name is not None else self._auto_name(step.kind)
        if name in self._steps:
            raise InvalidWorkflow(f"step {name!r}: the workflow has two steps with that name")
        if step.when not in POLICIES:
            raise InvalidWorkflow(f"step {name!r}: 'when' is 'succeeded' or 'finished', not {step.when!r}")
        own = [self._after(item, step.when) for item in step.after]
        placed = [self._after(item, step.when) for item in after] + own
        self._steps[name] = step
        self._order.append(name)
        self._edges[name] = placed
        return [name]

    def _auto_name(self, kind: str) -> str:
        base = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(kind)) or "step"
        while True:
            self._counts[base] = self._counts.get(base, 0) + 1
            name = f"{base}-{self._counts[base]}"
            if name not in self._steps:
                return name

    def plan(self, registry: Registry) -> Plan:
        """Check the workflow against the kinds; ``InvalidWorkflow`` names the step at fault."""
        _check_name(self.name)
        if not self._order:
            raise InvalidWorkflow(f"workflow {self.name!r} has no steps")
        for name in self._order:
            self._check_edges(name)
        order = _topological(self._order, self._edges)
        steps = []
        for name in order:
            step = self._steps[name]
            parents = tuple(self._edges[name])
            try:
                kind = registry.get(step.kind)
            except BadInput as error:
                raise InvalidWorkflow(f"step {name!r}: {error.message}") from None
            if kind.unique is not None or kind.debounce is not None:
                which = "a unique window" if kind.unique is not None else "a debounce"
                raise InvalidWorkflow(
                    f"step {name!r}: kind {kind.name!r} has {which}, so its job may collapse into "
                    "another: it cannot be a workflow's step"
                )
            payload = dict(step.payload)
            inputs = dict(step.inputs)
            try:
                step_inputs.check(inputs, [parent.step for parent in parents])
            except ValueError as error:
                raise InvalidWorkflow(f"step {name!r}: {error}") from None
            if inputs:
                _check_partial(name, kind, payload, inputs)
            else:
                try:
                    kind.validate(payload)
                except BadInput as error:
                    raise InvalidWorkflow(f"step {name!r}: {error.message}") from None
            steps.append(
                PlannedStep(
                    name, kind, payload, parents, inputs, step.queue, step.priority, step.max_attempts
                )
            )
        return Plan(self.name, tuple(steps))

    def _check_edges(self, name: str) -> None:
        if not step_inputs.valid_step_name(name):
            raise InvalidWorkflow(
                f"step {name!r}: a step name is letters, digits, '_', '-' and ':' (no dots), "
                f"at most {MAX_NAME} characters"
            )
        seen: set[str] = set()
        for parent in self._edges[name]:
            if parent.step not in self._steps:
                raise InvalidWorkflow(
                    f"step {name!r} comes after {parent.step!r}, which is not a step of this workflow"
                )
            if parent.step == name:
                raise InvalidWorkflow(f"step {name!r} comes after itself")
            if parent.when not in POLICIES:
                raise InvalidWorkflow(
                    f"step {name!r}: 'when' is 'succeeded' or 'finished', not {parent.when!r}"
                )
            if parent.step in seen:
                raise InvalidWorkflow(f"step {name!r} comes after {parent.step!r} twice")
            seen.add(parent.step)

    @classmethod
    def from_spec(cls, spec: Any) -> Workflow:
        """A workflow from its spec (the shape of a ``jobs workflow submit`` file; see
        ``jobs.workflows.files``)."""
        from jobs.workflows.files import from_spec

        return from_spec(spec)

    def to_spec(self) -> dict[str, Any]:
        """The workflow as spec data (what ``from_spec`` reads back into the same workflow): its
        steps in the order they were added, each with its name and every dependency explicit,
        those a chain or chord gave it included. What a schedule firing the workflow stores."""
        steps = []
        for name in self._order:
            step = self._steps[name]
            item: dict[str, Any] = {"name": name, "kind": step.kind, "payload": dict(step.payload)}
            if self._edges[name]:
                item["after"] = [{"step": parent.step, "when": parent.when} for parent in self._edges[name]]
            if step.inputs:
                item["inputs"] = dict(step.inputs)
            options = {"queue": step.queue, "priority": step.priority, "max_attempts": step.max_attempts}
            item.update({key: value for key, value in options.items() if value is not None})
            steps.append(item)
        return {"name": self.name, "steps": steps}


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidWorkflow(f"a workflow's name is 1 to {MAX_NAME} characters")
    problem = jsonsafe.unstorable(name, root="workflow name")
    if problem is not None:
        raise InvalidWorkflow(problem)


def _topological(order: list[str], edges: Mapping[str, list[After]]) -> list[str]:
    """The steps, every parent before its children (ties in the order they were added)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in order:
        sorter.add(name, *(parent.step for parent in edges[name]))
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = list(error.args[1])
        raise InvalidWorkflow(
            f"step {cycle[0]!r} depends on itself through a cycle: {' -> '.join(reversed(cycle))}"
        ) from None
    position = {name: index for index, name in enumerate(order)}
    placed: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        placed.extend(ready)
        sorter.done(*ready)
    return placed


def _check_partial(name: str, kind: Kind, payload: dict[str, Any], inputs: dict[str, Any]) -> None:
    """A payload some of whose fields come from inputs: valid except where an input fills it."""
    try:
        kind.payload.model_validate(payload)
    except pydantic.ValidationError as error:
        for problem in error.errors():
            loc = [str(part) for part in problem["loc"]]
            if step_inputs.source_of(inputs, loc) is None and not _under_input(loc, inputs):
                where = ".".join(loc) or "payload"
                message = f"invalid payload for kind {kind.name!r}: field {where!r}: {problem['msg']}"
                raise InvalidWorkflow(f"step {name!r}: {message}") from None
    problem_text = jsonsafe.unstorable(payload, root="payload")
    if problem_text is not None:
        raise InvalidWorkflow(f"step {name!r}: {problem_text}")


def _under_input(loc: list[str], inputs: Mapping[str, Any]) -> bool:
    """Whether an input fills a field inside ``loc`` (the error is about its missing parent)."""
    dotted = ".".join(loc)
    return any(field.startswith(dotted + ".") for field in inputs)
