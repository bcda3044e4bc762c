"""Job kinds: a stable name, a pydantic model for the payload, a body and its options.

A team adds a kind in a few lines::

    class Resize(BaseModel):
        model_config = ConfigDict(frozen=True)
        image_id: int
        width: int

    @jobs.kind("images.resize", payload=Resize, queue="images", max_attempts=3)
    def resize(ctx: jobs.JobContext, p: Resize) -> dict[str, int]:
        ...

The producer validates a payload against the model when the job is submitted;
the worker validates it again before the body runs. Kinds whose bodies live in
the worker (the built-ins) are declared here with ``declare`` and given their
body with ``Registry.implement``, so producers never import worker code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_core import to_jsonable_python

from jobs import jsonsafe
from jobs.backoff import Backoff
from jobs.context import JobContext
from jobs.errors import DuplicateKind, InvalidPayload, UnknownKind
from jobs.limits import Debounce, Limit, Unique, check_path
from jobs.settings import Settings

__all__ = ["Body", "Kind", "Registry", "declare", "kind", "lease_for", "registry"]

Body = Callable[[JobContext, Any], Any]

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class Kind:
    """A declared job kind and its per-kind options (``None`` means: the settings' default)."""

    name: str
    payload: type[BaseModel]
    result: type[BaseModel] | None = None
    body: Body | None = None
    queue: str | None = None
    priority: int = 5
    max_attempts: int | None = None
    backoff: Backoff = field(default_factory=Backoff)
    soft_time_limit: float | None = None
    hard_time_limit: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    description: str = ""
    version: str | None = None
    """What workers advertise for this kind; by default a fingerprint of the payload's schema."""
    limits: tuple[Limit, ...] = ()
    """Flow control (``jobs.limits``): the limits its jobs start under."""
    unique: Unique | None = None
    debounce: Debounce | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"kind name {self.name!r} must be dotted lower-case words, like 'images.resize'")
        if not 0 <= self.priority <= 9:
            raise ValueError(f"kind {self.name}: priority must be 0 (first) to 9 (last)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"kind {self.name}: max_attempts must be at least 1")
        soft, hard = self.soft_time_limit, self.hard_time_limit
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(f"kind {self.name}: soft_time_limit must be below hard_time_limit")
        owned = tuple(
            limit if limit.queue is not None else dataclasses.replace(limit, kind=self.name)
            for limit in self.limits
        )
        object.__setattr__(self, "limits", owned)
        for limit in owned:
            if limit.path is not None:
                check_path(self.payload, limit.path, kind=self.name)
        for paths in (self.unique.paths if self.unique else (), self.debounce.paths if self.debounce else ()):
            for path in paths:
                check_path(self.payload, path, kind=self.name)
        if self.unique is not None and self.debounce is not None:
            raise ValueError(f"kind {self.name}: a unique window and a debounce exclude each other")

    @property
    def advertised_version(self) -> str:
        """The version workers advertise in the roster: ``version``, else ``schema:`` and a
        fingerprint of the payload model's JSON schema (so two deploys of one kind can be told apart)."""
        return self.version or f"schema:{_fingerprint(self.payload)}"

    @property
    def has_secrets(self) -> bool:
        """Whether the payload model declares secret fields (masked wherever shown)."""
        return _has_secrets(self.payload)

    def validate(self, data: Any) -> BaseModel:
        """The payload as the kind's model, or ``InvalidPayload`` naming the field."""
        try:
            # model_validate's own wrapper, without options, costs more than the validation.
            made: BaseModel = self.payload.__pydantic_validator__.validate_python(data)
            return made
        except pydantic.ValidationError as error:
            raise InvalidPayload(f"invalid payload for kind {self.name!r}: {_fields(error)}") from None

    def dump(self, payload: BaseModel) -> dict[str, Any]:
        """JSON-shaped payload with secrets revealed: what the ledger stores and the body gets."""
        try:
            if not self.has_secrets:  # the common case, done in pydantic's core alone
                return payload.model_dump(mode="json")
            dumped = to_jsonable_python(_reveal(payload.model_dump(mode="python")))
        except UnicodeEncodeError:  # pydantic's core cannot take a surrogate code point (in an Any field)
            found = jsonsafe.unstorable(_reveal(payload.model_dump(mode="python")), objects_ok=True)
            problem = found or "a string holds a surrogate code point, which the ledger cannot store"
            raise InvalidPayload(f"invalid payload for kind {self.name!r}: {problem}") from None
        assert isinstance(dumped, dict)
        return dumped

    def to_json(self, dumped: dict[str, Any]) -> str:
        """A dumped payload as compact JSON text; ``InvalidPayload`` names what the ledger cannot store."""
        try:
            text: str | None = jsonsafe.compact(dumped)
        except ValueError:  # NaN, Infinity or an integer too long to write: named below
            text = None
        problem = jsonsafe.unstorable(dumped, text=text)
        if problem is not None:
            raise InvalidPayload(f"invalid payload for kind {self.name!r}: {problem}")
        assert text is not None, "json.dumps refuses only what jsonsafe names"
        return text

    def display(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored payload as people may see it: ``SecretStr`` fields masked."""
        try:
            shown = self.payload.model_validate(stored).model_dump(mode="json")
        except pydantic.ValidationError:
            return dict.fromkeys(stored, "**********")
        assert isinstance(shown, dict)
        return shown

    def dump_result(self, value: Any) -> Any:
        """The body's return value as JSON, validated against the result model if there is one."""
        if self.result is not None:
            return to_jsonable_python(self.result.model_validate(value).model_dump(mode="json"))
        jsonable = to_jsonable_python(value, fallback=repr)
        json.dumps(jsonable)
        return jsonable


@functools.cache
def _fingerprint(model: type[BaseModel]) -> str:
    schema = json.dumps(model.model_json_schema(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(schema.encode()).hexdigest()[:12]


@functools.cache
def _has_secrets(model: type[BaseModel]) -> bool:
    schema = json.dumps(model.model_json_schema())
    return '"writeOnly": true' in schema or '"format": "password"' in schema


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(item) for item in value]
    return value


def _fields(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        # A key from the input can hold any character: escaped, the message stays one storable line.
        where = ".".join(jsonsafe.visible(str(part)) for part in item["loc"]) or "payload"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class Registry:
    """Every kind this process knows, by name. Registering a name twice is refused."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def register(self, kind: Kind) -> Kind:
        existing = self._kinds.get(kind.name)
        if existing is not None and existing != kind:
            raise DuplicateKind(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def implement(self, name: str) -> Callable[[Body], Body]:
        """Attach a body to a kind declared without one."""

        def attach(body: Body) -> Body:
            kind = self.get(name)
            if kind.body is not None and kind.body is not body:
                raise DuplicateKind(f"job kind {name!r} already has a body")
            self._kinds[name] = dataclasses.replace(kind, body=body)
            return body

        return attach

    def get(self, name: str) -> Kind:
        """The kind registered under ``name``, or ``UnknownKind`` suggesting the closest name."""
        try:
            return self._kinds[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, self._kinds, n=1)
        if close:
            raise UnknownKind(f"unknown job kind {name!r} (did you mean {close[0]!r}?)")
        known = ", ".join(sorted(self._kinds)) or "none"
        raise UnknownKind(f"unknown job kind {name!r} (known kinds: {known})")

    def unregister(self, name: str) -> None:
        """Forget a kind (for tests that declare throwaway kinds)."""
        self._kinds.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(sorted(self._kinds.values(), key=lambda k: k.name))

    def __len__(self) -> int:
        return len(self._kinds)


registry = Registry()


def lease_for(settings: Settings, kind: Kind | None) -> float:
    """Seconds a claim holds a job: its hard limit plus the margin (expires only if the worker is gone)."""
    hard = (kind.hard_time_limit if kind else None) or settings.hard_time_limit
    return hard + settings.lease_margin


def declare(name: str, *, payload: type[BaseModel], **options: Any) -> Kind:
    """Register a kind whose body is attached elsewhere (see ``Registry.implement``)."""
    return registry.register(Kind(name=name, payload=payload, **options))


def kind[F: Body](name: str, *, payload: type[BaseModel], **options: Any) -> Callable[[F], F]:
    """Decorator: register the function as the body of kind ``name``; returns it unchanged."""

    def register(body: F) -> F:
        description = options.pop("description", None) or (body.__doc__ or "").strip()
        registry.register(Kind(name=name, payload=payload, body=body, description=description, **options))
        return body

    return register
