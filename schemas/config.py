"""Typed frozen config dataclasses from YAML files and ``key.sub=value`` overrides.

Every stage describes a job with a frozen dataclass (``PlanConfig``, ``BuildConfig``, the
tokenizer ``TrainConfig``, ``EncodeConfig``, the model's ``TrainConfig``). This module is
the one place that turns plain data (a YAML file, ``--set`` overrides, flags) into such a
dataclass and back, so every CLI takes ``--config FILE.yaml --set key=value`` the same way
and a run is fully described by one file. It only validates: a config file is read with
``yaml.safe_load`` (plain data, nothing executed) and every key is checked against the
dataclass' fields and types.

A dataclass may offer named presets: a ``PRESET_KEY`` class attribute (e.g. ``"size"``)
and a ``from_preset(name)`` classmethod; ``{size: base, dim: 512}`` starts from the preset.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_tree",
    "dump_config",
    "field_default",
    "from_dict",
    "load_config",
    "parse_override",
    "read_config_file",
    "set_path",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, an override or a config value that cannot be used (one line)."""


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain YAML/JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(tp)):
            return None
        if len(members) == 1:
            return _coerce(members[0], value, where)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, Mapping) and len(args) == 2 and args[1] is Ellipsis:
            # {S2L2A: [B02, B03]} for a tuple of (key, value) pairs
            value = list(value.items())
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]  # "A,B" from --set
        if not isinstance(value, list | tuple):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: not a boolean: {value!r}")
        return bool(value)
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected int, got {value!r}")
        if tp is not str and isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build a config dataclass from nested plain data; unknown keys are an error.

    A dataclass with a ``PRESET_KEY`` (e.g. the model's ``size``) starts from
    ``cls.from_preset(value)`` when that key is given. Errors of the dataclass' own
    validation (``__post_init__``) propagate as they are; a missing required field is a
    :class:`ConfigError`.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    base = None
    preset_key = getattr(cls, "PRESET_KEY", None)
    if preset_key and preset_key in data:
        base = cls.from_preset(str(data.pop(preset_key)))  # type: ignore[attr-defined]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown keys {sorted(unknown)}; valid: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        missing = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{where or cls.__name__}: missing {', '.join(missing)}") from None
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def field_default(cls: type, name: str) -> Any:
    """The default of a dataclass field (what a CLI flag falls back to and shows)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ConfigError(f"{cls.__name__}.{name} has no default")
    raise ConfigError(f"{cls.__name__} has no field {name!r}")


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value) with the value parsed as YAML (lists, numbers, bools)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: not a YAML value ({_first_line(exc)})") from None
    return key.strip(), value


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree[a][b] = value`` for the dotted ``key`` ``a.b``, creating sections."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(
    tree: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]
) -> dict[str, Any]:
    """``tree`` with each ``key.sub=value`` (or parsed ``(key, value)``) applied in order."""
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_path(tree, key, value)
    return tree


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML (or JSON) config file, read with ``yaml.safe_load``."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {_first_line(exc)}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({_first_line(exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return loaded


def config_tree(
    path: str | Path | None = None, overrides: Iterable[str | tuple[str, Any]] = ()
) -> dict[str, Any]:
    """The plain-data tree of a config file (optional) with overrides applied."""
    tree = read_config_file(path) if path is not None else {}
    return apply_overrides(tree, overrides)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str | tuple[str, Any]] = (),
) -> T:
    """A ``cls`` from a YAML file (optional) plus ``key.sub=value`` overrides, in that order."""
    return from_dict(cls, config_tree(path, overrides))


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON."""
    import yaml

    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2))


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
