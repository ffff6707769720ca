"""Named registries (``name -> class or factory``): the one lookup every family of them goes through."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def build_named(registry: Mapping[str, Callable[..., T]], name: str, family: str, **options: Any) -> T:
    """``registry[name]`` called with those ``options`` its signature accepts (e.g. ``sigma_data`` reaches the
    EDM scaling and not the ε one).

    An unknown ``name`` is a ``ValueError`` naming it and listing the valid names of the ``family``.
    """
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {family} {name!r}; valid: {', '.join(sorted(registry))}")
    factory = registry[name]
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted})
