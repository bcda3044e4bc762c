"""What the ledger can store: PostgreSQL's JSONB and text refuse NUL and lone surrogates.

``unstorable`` finds the first such value (with its path); ``escaped`` makes a
copy with each one written as a visible escape, for keeping a safe copy of a
foreign message that cannot be stored as it came.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["escaped", "unstorable"]

_BAD = re.compile("[\x00\ud800-\udfff]")


def _why(text: str) -> str | None:
    found = _BAD.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which the ledger cannot store"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which the ledger cannot store"


def unstorable(value: Any, path: str = "") -> str | None:
    """``"path: reason"`` for the first string or key the ledger cannot store, else ``None``."""
    if isinstance(value, str):
        why = _why(value)
        return f"{path or 'payload'}: {why}" if why else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (why := _why(key)):
                return f"{path or 'payload'}: a key {why}"
            found = unstorable(item, where)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def _escape(text: str) -> str:
    return _BAD.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def escaped(value: Any) -> Any:
    """A copy of ``value`` with every NUL and lone surrogate written as ``\\uXXXX`` (six characters)."""
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, dict):
        return {_escape(key) if isinstance(key, str) else key: escaped(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [escaped(item) for item in value]
    return value
