"""The kinds a process knows: the built-ins, and those of the modules ``JOBS_KIND_MODULES`` names.

Apart from ``jobs.kinds`` (what a kind is, and the registry) so that the
built-ins, which declare themselves through ``jobs.kinds``, are imported from
here and never from the module they use.
"""

from __future__ import annotations

import importlib

from jobs.errors import ConfigError
from jobs.kinds import Registry, registry

__all__ = ["load_kinds"]


def load_kinds(modules: list[str]) -> Registry:
    """Import the built-in kinds and the modules that declare your own (``JOBS_KIND_MODULES``)."""
    from jobs import builtin  # noqa: F401 - importing it declares the built-in kinds

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"invalid setting JOBS_KIND_MODULES: cannot import {module!r} ({error})"
            ) from None
    return registry
