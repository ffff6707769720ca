"""The machinery under :mod:`vidiff.training.config`: building frozen dataclasses from YAML trees with every
value coerced to its field's type, ``key=value`` overrides, and the error that names the bad field."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the offending field."""


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name} {msg}")


def _one_of(value: Any, name: str, choices: tuple[Any, ...]) -> None:
    _check(value in choices, name, f"must be one of {list(choices)}, got {value!r}")


# -- helpers -------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known: {sorted(known)})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML / command-line value to type ``tp`` or raise naming the field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot parse {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{name}.")
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name} must be a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], root: type) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b=value`` overrides set, keys checked against the dataclass ``root``
    (values are YAML-parsed strings; typed conversion happens when the dataclasses are built)."""
    out = copy.deepcopy(data)  # YAML trees: dicts, lists and scalars
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = text.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        cls: Any = root
        node = out
        for i, p in enumerate(parts):
            dotted = ".".join(parts[: i + 1])
            if not (dataclasses.is_dataclass(cls) and p in {f.name for f in fields(cls)}):
                raise ConfigError(f"unknown config key {dotted}")
            tp = _hints(cls)[p]
            inner = [a for a in typing.get_args(tp) if a is not type(None)]  # ``X | None`` sections (lora)
            tp = inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else tp
            if i == len(parts) - 1:
                node[p] = raw if tp is str or str in typing.get_args(tp) else _yaml_value(raw)
            else:
                cls = tp
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{dotted} is not a mapping")
    return out


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw

