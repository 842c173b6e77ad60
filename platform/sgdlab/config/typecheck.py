"""One config group checked against the dataclass of its option: unknown keys, missing keys, types.

`check_group(prefix, values, schema)` returns the group with every key of the dataclass: a given value converted
to the field's type (int -> float is allowed, bool -> int is not; a number must be finite), a left-out key its
default; an unknown key, a missing key without default or a value of the wrong type raises `ConfigError` naming `prefix.key` and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal

from sgdlab.config.schema import ConfigError


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}[tp]


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return value converted to tp (int -> float is allowed, bool -> int is not) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return coerce(value, arm, key)
            except ConfigError as exc:
                if "finite" in str(exc):  # the right type, an impossible value: say so
                    raise
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [coerce(v, typing.get_args(tp)[0], key) for v in value]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # no config value means NaN or infinity
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def check_group(prefix: str, values: Any, schema: type) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: expected a config group, got {values!r}")
    hints = _type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; allowed: {', '.join(names)}")
    out = {}
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}"
        if f.name not in values:
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
                continue
            if f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
                continue
            raise ConfigError(f"{key}: missing")
        out[f.name] = coerce(values[f.name], hints[f.name], key)
    return out
