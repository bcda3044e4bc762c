"""Lazily built settings, kinds and producer shared by the CLI's commands."""

from __future__ import annotations

import functools

from jobs.kinds import Registry, load_kinds
from jobs.producer import Producer
from jobs.settings import Settings, get_settings

__all__ = ["producer", "registry", "settings"]


def settings() -> Settings:
    return get_settings()


@functools.cache
def registry() -> Registry:
    return load_kinds(settings().kind_modules)


@functools.cache
def producer() -> Producer:
    return Producer(settings(), registry=registry())
