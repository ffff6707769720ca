"""Named registries (``name -> class or factory``): the one lookup every family of them goes through."""

from __future__ import annotations

import dataclasses
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


def dataclass_from_config(cls: type[T], config: Mapping[str, Any], ignored: frozenset[str], what: str) -> T:
    """``cls(**config)`` for a config dataclass read from JSON: ``ignored`` bookkeeping keys are dropped and an
    unknown key is a ``ValueError`` naming it (``what``: the class the JSON describes, e.g. its diffusers name)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kept = {k: v for k, v in config.items() if k not in ignored}
    unknown = sorted(set(kept) - known)
    if unknown:
        raise ValueError(f"unknown {what} config keys: {unknown}")
    return cls(**kept)
