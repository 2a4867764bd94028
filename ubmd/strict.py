"""Strict construction of configuration objects from user files (YAML/JSON/dicts).

An unknown or misspelt key is an error that names the key, where it was found and the
nearest valid key; a value of the wrong type is an error naming the value and the type
that would be accepted. Works for frozen dataclasses (validated with pydantic's
TypeAdapter) and pydantic models.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or section is invalid; the message says where and why."""


# YAML aliases share one object many times; a few nested ones ("billion laughs") stand for
# more values than any config holds, and walking or printing them would never end.
MAX_YAML_VALUES = 100_000


def load_yaml(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse a YAML file; every failure is a ConfigError (or OSError) naming the file."""
    import yaml

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory, not a YAML file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path!r} is not a text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {exc}") from None
    _count_values(data, path, what)
    return data


def _count_values(data: Any, path: str, what: str) -> None:
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(
                f"{what} {path!r} expands to more than {MAX_YAML_VALUES} values (nested YAML "
                "aliases?); a configuration file holds far fewer"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for naming a value in a message."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = 6
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def nearest(key: str, valid: Iterable[str]) -> str | None:
    """The closest valid name to ``key`` (or None if nothing is close)."""
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def check_keys(data: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise ConfigError for the first key of ``data`` that is not in ``valid``."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            hint = nearest(str(key), valid)
            did_you_mean = f"; did you mean '{hint}'?" if hint else ""
            raise ConfigError(
                f"unknown key '{key}' in {where}{did_you_mean} (valid keys: {', '.join(sorted(valid))})"
            )


def build(
    cls: type[T],
    data: Mapping[str, Any] | None,
    where: str,
    *,
    fixed: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (a dataclass or pydantic model) from ``data``, strictly.

    ``fixed``: fields the caller sets, not the user; they are not valid keys of ``data``.
    """
    from pydantic import BaseModel, TypeAdapter, ValidationError

    data = {} if data is None else data
    fixed = fixed or {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where} must be a mapping of keys to values, got {type(data).__name__}: {brief(data)}"
        )
    if dataclasses.is_dataclass(cls):
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
    elif isinstance(cls, type) and issubclass(cls, BaseModel):
        valid = list(cls.model_fields)
    else:
        raise TypeError(f"cannot build {cls!r}: not a dataclass or pydantic model")
    check_keys(data, [k for k in valid if k not in fixed], where)
    _check_nested(cls, data, where)
    data = {**data, **fixed}
    try:
        if dataclasses.is_dataclass(cls):
            return TypeAdapter(cls).validate_python(dict(data))
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    except (TypeError, ValueError) as exc:  # raised by the class's own __post_init__ checks
        raise ConfigError(f"{where}: {exc}") from None


def place(where: str, path: str) -> str:
    """The place of a key ``path`` inside ``where``: after a dot inside a key path
    ("exploration.settings.stop"), after a colon inside a file or a named thing
    ("c.yaml: selection.batch_size", "training config: lr")."""
    named = where.endswith((".yaml", ".yml", ".json")) or " " in where
    return f"{where}: {path}" if named and ": " not in where else f"{where}.{path}"


def _config_class(annotation: Any) -> type | None:
    """The dataclass or pydantic model an annotation names (also as ``X | None``; None for a
    union of several, which pydantic tells apart by their keys)."""
    import types
    import typing

    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        candidates = typing.get_args(annotation)
    elif origin is None:
        candidates = (annotation,)
    else:  # containers (dict[str, X], list[X]) are checked item by item
        return None
    found = [
        c
        for c in candidates
        if isinstance(c, type) and (dataclasses.is_dataclass(c) or issubclass(c, BaseModel))
    ]
    return found[0] if len(found) == 1 else None


def _items(annotation: Any, value: Any) -> list[tuple[str, type, Any]]:
    """(suffix, class, item) for the config-class items of a dict[str, X] / list[X] value."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2 and isinstance(value, Mapping):
        nested = _config_class(args[1])
        return [(f".{k}", nested, v) for k, v in value.items()] if nested else []
    if origin in (list, tuple) and args and isinstance(value, list | tuple):
        nested = _config_class(args[0])
        return [(f"[{i}]", nested, v) for i, v in enumerate(value)] if nested else []
    return []


def _check_nested(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Unknown keys in nested sections (e.g. ``stop`` inside explorer settings) are errors too:
    pydantic would silently drop them for dataclasses."""
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: nothing to recurse into
        return
    for key, value in data.items():
        nested = _config_class(hints.get(key))
        parts = [("", nested, value)] if nested else _items(hints.get(key), value)
        for suffix, klass, item in parts:
            if not isinstance(item, Mapping):
                continue
            if dataclasses.is_dataclass(klass):
                valid = [f.name for f in dataclasses.fields(klass) if f.init]
            else:
                valid = list(klass.model_fields)
            check_keys(item, valid, place(where, f"{key}{suffix}"))
            _check_nested(klass, item, place(where, f"{key}{suffix}"))


def format_validation_error(exc: Any, where: str) -> str:
    """One readable line per pydantic error: location, offending value, what is accepted."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        at = place(where, loc) if loc else where
        value = err.get("input")
        if err.get("type") == "extra_forbidden":
            lines.append(f"unknown key '{loc.split('.')[-1]}' in {where}")
            continue
        msg = str(err.get("msg"))
        if err.get("type") == "value_error":  # our own checks: their message names the value
            msg = msg.removeprefix("Value error, ")
        if isinstance(value, dict | list):
            # the whole section came back as the input: the message names the key already
            lines.append(f"{at}: {msg}")
        else:
            lines.append(f"{at}: {msg} (got {brief(value)})")
    return "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
