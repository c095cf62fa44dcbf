"""Plain data (YAML recipes, `--set` values, JSON in model cards and checkpoints) read into
typed dataclasses: the one way every configuration is read and checked.

`from_dict` checks keys and each value's declared type (nested dataclasses, tuples, lists,
literals, optional values); the rules a value must follow beyond its type (ranges, orderings)
live in each dataclass's `__post_init__`, so a configuration built in code is checked the same
way as one read from a file. Torch-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from .errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


def from_dict(cls: type[T], data: object, where: str = "config", complete: bool = False) -> T:
    """`cls` from a mapping of its fields; `complete`: every field must be given (a saved model
    must say exactly how it was made, not fall back on today's defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    data = _current_names(cls, data, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    missing = [name for name in names if name not in data]
    if complete and missing:
        raise ConfigError(f"{where} lacks {missing} (every key must be given)")
    values = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def _current_names(cls: type, data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """`data` with keys renamed since it was written (the class's RENAMED_KEYS: old -> new)
    under their new names, so old recipes, run directories and checkpoints stay readable."""
    renamed: Mapping[str, str] = getattr(cls, "RENAMED_KEYS", {})
    old_names = [key for key in renamed if key in data]
    if not old_names:
        return data
    current = dict(data)
    for old in old_names:
        new = renamed[old]
        if new in current:
            raise ConfigError(f"{where}: {old} is the old name of {new}: give only {new}")
        current[new] = current.pop(old)
        log.warning("%s.%s is deprecated: read as %s.%s (same meaning)", where, old, where, new)
    return current


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-ready data (tuples become lists); `from_dict` reads it back."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """A YAML/JSON/CLI value as the declared field type, or a ValueError that names the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        number = None
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):  # .nan/.inf: never a setting
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
