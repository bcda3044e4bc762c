"""Lazily built settings, kinds and producer shared by the CLI's commands, and who runs them.

Nothing is imported until a command asks: loading this module costs nothing,
so commands (and their shell completion) start fast.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.kinds import Registry
    from jobs.producer import Producer
    from jobs.settings import Settings

__all__ = ["producer", "registry", "settings", "who"]


def settings() -> Settings:
    from jobs.settings import get_settings

    return get_settings()


@functools.cache
def registry() -> Registry:
    from jobs.catalog import load_kinds

    return load_kinds(settings().kind_modules)


@functools.cache
def producer() -> Producer:
    from jobs.producer import Producer

    return Producer(settings(), registry=registry())


def who() -> str:
    """Who acts, as the ledger records it (``submitted_by``, ``paused_by``…): ``cli:USER``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
