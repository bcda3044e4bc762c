from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from jobs import jsonsafe
from jobs.errors import DuplicateKind, InvalidPayload, UnknownKind
from jobs.kinds import Kind, Registry

pytestmark = pytest.mark.unit


class Resize(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    image_id: int
    width: int = 640


class Login(BaseModel):
    user: str
    password: SecretStr


class Out(BaseModel):
    size: int


def test_validate_coerces_and_names_the_failing_field():
    kind = Kind("images.resize", Resize)
    assert kind.validate({"image_id": "7"}) == Resize(image_id=7)
    with pytest.raises(InvalidPayload, match=r"'images.resize': image_id: Input should be a valid integer"):
        kind.validate({"image_id": "seven"})
    with pytest.raises(InvalidPayload, match=r"color: Extra inputs are not permitted"):
        kind.validate({"image_id": 1, "color": "red"})


def test_secrets_are_stored_for_the_body_and_masked_for_people():
    kind = Kind("auth.login", Login)
    stored = kind.dump(kind.validate({"user": "ann", "password": "hunter2"}))
    assert stored == {"user": "ann", "password": "hunter2"}
    assert kind.has_secrets
    assert kind.display(stored) == {"user": "ann", "password": "**********"}
    assert not Kind("images.resize", Resize).has_secrets


def test_result_model_validates_the_return_value():
    kind = Kind("images.size", Resize, result=Out)
    assert kind.dump_result({"size": "3"}) == {"size": 3}
    assert Kind("images.size", Resize).dump_result({"a": (1, 2)}) == {"a": [1, 2]}


@pytest.mark.parametrize("name", ["Images", "images.", "1x", "a b", "a..b", ""])
def test_kind_names_are_stable_dotted_words(name):
    with pytest.raises(ValueError, match="dotted lower-case"):
        Kind(name, Resize)


def test_options_are_checked():
    with pytest.raises(ValueError, match="priority"):
        Kind("a", Resize, priority=10)
    with pytest.raises(ValueError, match="max_attempts"):
        Kind("a", Resize, max_attempts=0)
    with pytest.raises(ValueError, match="soft_time_limit"):
        Kind("a", Resize, soft_time_limit=5, hard_time_limit=5)


def test_registry_refuses_a_second_kind_with_the_same_name():
    registry = Registry()
    registry.register(Kind("images.resize", Resize))
    registry.register(Kind("images.resize", Resize))  # the same declaration again is harmless
    with pytest.raises(DuplicateKind, match="already registered"):
        registry.register(Kind("images.resize", Resize, queue="other"))


def test_registry_names_known_kinds_when_one_is_unknown():
    registry = Registry()
    registry.register(Kind("b.two", Resize))
    registry.register(Kind("a.one", Resize))
    assert [k.name for k in registry] == ["a.one", "b.two"]
    with pytest.raises(UnknownKind, match=r"unknown job kind 'c' \(known kinds: a.one, b.two\)"):
        registry.get("c")


def test_registry_suggests_the_closest_name_for_a_typo():
    registry = Registry()
    for name in ("ping", "http.post", "pg.vacuum_analyze"):
        registry.register(Kind(name, Resize))
    with pytest.raises(UnknownKind, match=r"^unknown job kind 'pnig' \(did you mean 'ping'\?\)$"):
        registry.get("pnig")
    with pytest.raises(UnknownKind, match=r"\(did you mean 'http.post'\?\)"):
        registry.get("http.pots")


def test_a_field_path_from_the_input_is_shown_escaped():
    kind = Kind("images.resize", Resize)
    with pytest.raises(InvalidPayload) as caught:
        kind.validate({"image_id": 1, "bad\x00key\n": 2})
    assert "bad\\u0000key\\u000a: Extra inputs are not permitted" in caught.value.message
    assert jsonsafe.unstorable(caught.value.message) is None  # a worker can record it as the job's error


class Loose(BaseModel):
    anything: object = None


def test_a_surrogate_in_a_key_pydantic_cannot_serialize_is_invalid_payload():
    kind = Kind("a.loose", Loose)
    with pytest.raises(InvalidPayload, match=r'anything: the key "k\\udc80" contains the surrogate'):
        kind.dump(kind.validate({"anything": {"k\udc80": 1}}))


def test_implement_attaches_a_body_once():
    registry = Registry()
    registry.register(Kind("a.one", Resize))

    def body(ctx, payload):
        return None

    registry.implement("a.one")(body)
    assert registry.get("a.one").body is body

    def other(ctx, payload):
        return None

    with pytest.raises(DuplicateKind, match="already has a body"):
        registry.implement("a.one")(other)
