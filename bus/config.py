"""Typed configuration: a system's settings are a dataclass; this builds it from a TOML section and
command-line options, and prints it back.

A field may carry `option("--flag", "help")` metadata: it then also appears as a command-line option
in the system's argument group. A nested dataclass field is a sub-table (`[<system>.<field>]`).
Values are checked against the field's type here, and against the class's own rules in its
`__post_init__`; every error names the section and the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

_FLAG = "teebus_flag"
_HELP = "teebus_help"
_METAVAR = "teebus_metavar"
_SECRET = "teebus_secret"
SECRET_SHOWN_AS = "<secret>"


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names `[section] option`."""


def option(flag: str | None = None, help: str = "", *, metavar: str | None = None,
           secret: bool = False) -> dict[str, Any]:
    """Field metadata: the command-line flag (if any), its help, and whether the value is a secret."""
    return {_FLAG: flag, _HELP: help, _METAVAR: metavar, _SECRET: secret}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _check(value: Any, hint: Any, where: str, table: str = "") -> Any:
    """`value` as the field type `hint` asks; `where` names it in errors, `table` is its dotted path."""
    inner, nullable = _optional(hint)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where} may not be empty")
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} is a table of options, not {value!r}")
        return from_mapping(inner, value, table or where)
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if inner is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return value
    if inner is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be text, not {value!r}")
        return value
    if inner is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where} must be a path, not {value!r}")
        return Path(value).expanduser()
    if origin in (dict, Mapping, typing.Mapping):
        key_type, value_type = typing.get_args(inner) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        return {_check(k, key_type, f"{where} key"): _check(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    if origin in (tuple, list):
        (item_type, *_rest) = typing.get_args(inner) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        checked = [_check(item, item_type, f"{where}[]") for item in value]
        return tuple(checked) if origin is tuple else checked
    return value  # Any, or a type this checker does not know: the class's __post_init__ decides


def from_mapping(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """An instance of the dataclass `cls` from a TOML-like mapping; unknown keys are an error."""
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise ConfigError(f"[{section}] has no option {unknown[0]!r}; its options are: "
                          f"{', '.join(sorted(fields))}")
    hints = _hints(cls)
    checked = {name: _check(value, hints[name], f"[{section}] {name}", f"{section}.{name}")
               for name, value in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] {exc}") from None


def to_mapping(instance: Any, redact: Callable[[str], bool] = lambda name: False) -> dict[str, Any]:
    """The instance as TOML-like data for people to read; secrets shown as `<secret>`."""
    result: dict[str, Any] = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if field.metadata.get(_SECRET) or redact(field.name):
            result[field.name] = SECRET_SHOWN_AS
        elif dataclasses.is_dataclass(value):
            result[field.name] = to_mapping(value, redact)
        elif isinstance(value, Path):
            result[field.name] = str(value)
        elif isinstance(value, Mapping):
            result[field.name] = {k: str(v) if isinstance(v, Path) else v for k, v in value.items()}
        else:
            result[field.name] = value
    return result


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` laid over `base`, table by table."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- command-line options --------------------------------------------------------------------------

def _dest(section: str, path: tuple[str, ...]) -> str:
    return "config:" + ".".join((section, *path))


def _flagged(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dataclasses.Field, Any]]:
    found = []
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        inner, _ = _optional(hints[field.name])
        if dataclasses.is_dataclass(inner):
            found += _flagged(inner, (*path, field.name))
        elif field.metadata.get(_FLAG):
            found.append(((*path, field.name), field, inner))
    return found


def add_arguments(group: argparse._ArgumentGroup, cls: type, section: str) -> None:
    """One option per flagged field of `cls` (and of its nested tables) in `group`."""
    for path, field, inner in _flagged(cls):
        meta = field.metadata
        help_text = meta.get(_HELP) or ""
        if typing.get_origin(inner) in (dict, Mapping, typing.Mapping):
            group.add_argument(meta[_FLAG], action="append", dest=_dest(section, path),
                               metavar=meta.get(_METAVAR) or "KEY=VALUE", help=help_text)
        elif inner is bool:
            group.add_argument(meta[_FLAG], action=argparse.BooleanOptionalAction, dest=_dest(section, path),
                               default=None, help=help_text)
        else:
            kind = {int: int, float: float}.get(inner, str)
            group.add_argument(meta[_FLAG], type=kind, dest=_dest(section, path),
                               metavar=meta.get(_METAVAR) or path[-1].upper(), help=help_text)


def from_arguments(cls: type, section: str, args: argparse.Namespace) -> dict[str, Any]:
    """The values given on the command line for `cls`'s flagged fields, as a nested mapping."""
    given: dict[str, Any] = {}
    values = vars(args)
    for path, field, inner in _flagged(cls):
        value = values.get(_dest(section, path))
        if value is None:
            continue
        if typing.get_origin(inner) in (dict, Mapping, typing.Mapping):
            value = _pairs(value, field.metadata[_FLAG], field.metadata.get(_METAVAR) or "KEY=VALUE")
        table = given
        for name in path[:-1]:
            table = table.setdefault(name, {})
        table[path[-1]] = value
    return given


def _pairs(values: list[str], flag: str, metavar: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise ConfigError(f"{flag} takes {metavar}, got {value!r}")
        pairs[key] = item
    return pairs
