"""What the ledger cannot store, found before PostgreSQL refuses it.

PostgreSQL's JSONB and text columns refuse some values Python holds without
complaint; left to the database, each one is a ``DataError`` deep in an INSERT
(a traceback for the CLI, a poisoned message for a worker). Found by
experiment against PostgreSQL 15 with psycopg 3 (``tests/unit/test_jsonsafe.py``
lists them):

- the NUL character ``\\u0000``, in a string or an object key, and in a text
  column (psycopg refuses it before sending);
- surrogate code points ``\\ud800``..``\\udfff``: JSONB refuses a lone one, a
  high-low pair would come back as one other character, and psycopg cannot
  encode one for a text column;
- the floats NaN, Infinity and -Infinity, which JSON does not have;
- integers of more than 4,300 digits: the most Python's ``json`` reads back
  (``sys.get_int_max_str_digits``), so a worker could not load the payload.

``unstorable`` finds the first such value and names its path; ``escaped`` makes
a storable copy for keeping a foreign message's payload as evidence. Both are
cheap when nothing is wrong: the JSON text is screened for a few substrings
(about 3 µs for a 1 KiB payload whose text the caller has), and the value is
walked only when the screen finds a suspect.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

__all__ = ["MAX_INT_DIGITS", "compact", "escaped", "unstorable", "visible"]

#: The longest integer, in decimal digits, that Python's ``json`` reads back by default.
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS

# Suspects in JSON text written by ``json.dumps``: a NUL or surrogate escape, NaN or Infinity. Only
# a screen, never a verdict: an escaped backslash (the six characters \u0000 in a string) or the
# word NaN in a string match too. Substring tests first (the common case: none found), then the
# expression that tells a surrogate's escape from other \ud... ones (Hangul, U+D000..U+D7FF).
_SUSPECT = re.compile(r"\\u0000|\\ud[89a-f]|NaN|Infinity")
_BAD_CHARACTER = re.compile(r"[\x00\ud800-\udfff]")
# What a path segment may show as it is; anything else is written as an escape, so a message
# naming a path stays one printable line.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def compact(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``, a third of its cost.

    ``json.dumps`` (and ``JSONEncoder.encode``) build a new C encoder on every
    call; a payload is serialized once per job, so the bulk submit keeps one.
    Without cycle checking: the values given are JSON dumps (pydantic's, in
    JSON mode), which cannot be cyclic. Raises ``ValueError`` for NaN and the
    infinities, as ``json.dumps`` does.
    """
    if _C_ENCODER is None:  # an interpreter without json's C speedups
        return _PY_ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


_PY_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)
_MAKE_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # not in the type stubs
_C_ENCODER: Any = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None, _PY_ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
)


def unstorable(
    value: Any, *, text: str | None = None, root: str = "payload", objects_ok: bool = False
) -> str | None:
    """Where and why the ledger cannot store ``value``, or ``None`` when it can.

    The answer names the first offending value by its path, dotted like
    pydantic's (``body.items.3.name: contains a NUL character (\\u0000), which
    the ledger cannot store``); ``root`` names the value itself (an option such
    as ``queue``). ``text``, when the caller already has it, is
    ``json.dumps(value)`` (with ``ensure_ascii``, the default): it spares
    serializing again. ``objects_ok`` passes over values that are not JSON
    (a pydantic dump in Python mode, whose dates become strings later).
    """
    if text is None:
        try:
            text = json.dumps(value, allow_nan=False)
        except (ValueError, TypeError, RecursionError):
            text = None  # NaN, an over-long integer or a value that is not JSON: walk to name it
    if text is not None and text.isascii() and _screen_trusted() and not _suspect(text):
        return None
    return _walk(value, [], root, objects_ok)


def escaped(value: Any) -> Any:
    """A copy of a JSON value that the ledger can store: ``value`` itself when it already can.

    Each NUL or surrogate character becomes its visible escape (the six
    characters ``\\u0000``), in strings and object keys; NaN and the infinities
    become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; an
    over-long integer becomes a string saying how long it was. Lossy on
    purpose: for keeping a payload as evidence, not for running it.
    """
    if unstorable(value) is None:
        return value
    return _escape(value)


def _suspect(text: str) -> bool:
    if "\\u0000" in text or "\\ud" in text or "NaN" in text or "Infinity" in text:
        return _SUSPECT.search(text) is not None
    return False


def _screen_trusted() -> bool:
    # The screen finds over-long integers only because json.dumps refuses them; a process that
    # raised the limit (or lifted it: 0) must walk.
    return 0 < sys.get_int_max_str_digits() <= MAX_INT_DIGITS


def _walk(value: Any, path: list[str], root: str, objects_ok: bool = False) -> str | None:
    if isinstance(value, dict):
        return _walk_dict(value, path, root, objects_ok)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _walk(item, [*path, str(index)], root, objects_ok)
            if found is not None:
                return found
        return None
    where = ".".join(path) or root
    if not (isinstance(value, str | int | float) or value is None):
        return None if objects_ok else f"{where}: a value of type {type(value).__name__} is not JSON"
    reason = _bad_scalar(value)
    return None if reason is None else f"{where}: {reason}, which the ledger cannot store"


def _walk_dict(value: dict[Any, Any], path: list[str], root: str, objects_ok: bool) -> str | None:
    where = ".".join(path) or root
    for key, item in value.items():
        if not (isinstance(key, str | int | float) or key is None):  # json.dumps writes these
            if objects_ok:
                continue
            return f"{where}: a key of type {type(key).__name__} is not JSON"
        reason = _bad_scalar(key)
        if reason is not None:
            shown = f'the key "{visible(key)}"' if isinstance(key, str) else "a numeric key"
            return f"{where}: {shown} {reason}, which the ledger cannot store"
        found = _walk(item, [*path, visible(str(key))], root, objects_ok)
        if found is not None:
            return found
    return None


def _bad_scalar(value: str | int | float | None) -> str | None:
    """Why the ledger cannot store this string or number, or ``None`` (bools are ints here)."""
    if isinstance(value, str):
        found = _BAD_CHARACTER.search(value)
        if found is None:
            return None
        if found.group() == "\x00":
            return "contains a NUL character (\\u0000)"
        return f"contains the surrogate code point {_escape_character(found.group())}"
    if isinstance(value, int):
        return None if abs(value) < _INT_LIMIT else f"is an integer of more than {MAX_INT_DIGITS} digits"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {json.dumps(value)}, not a JSON number"
    return None


def _escape_character(character: str) -> str:
    return f"\\u{ord(character):04x}"


def visible(text: str) -> str:
    """``text`` with control characters, NUL and surrogates as escapes: one printable, storable line."""
    return _INVISIBLE.sub(lambda match: _escape_character(match.group()), text)


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        return {_escape_key(key): _escape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_escape(item) for item in value]
    if isinstance(value, str):
        return _BAD_CHARACTER.sub(lambda match: _escape_character(match.group()), value)
    if not (isinstance(value, int | float) or value is None):
        return _escape(repr(value))  # not JSON: kept as its repr
    if value is None or _bad_scalar(value) is None:
        return value
    return _escaped_number(value)


def _escaped_number(value: int | float) -> str:
    if isinstance(value, int):
        return f"<an integer of more than {MAX_INT_DIGITS} digits>"
    return json.dumps(value)  # "NaN", "Infinity" or "-Infinity"


def _escape_key(key: Any) -> Any:
    if isinstance(key, bool) or key is None:
        return key
    if isinstance(key, str | int | float):
        return _escape(key)
    return _escape(repr(key))
