"""Typed configuration: frozen dataclasses, loaded from YAML with command-line overrides.

Every stage, network and loss declares a frozen dataclass with defaults; a job composes them into one
config dataclass. ``load_config`` turns a YAML file plus ``--set a.b=value`` overrides into that
dataclass, rejecting unknown keys (named with their full dotted path) and values of the wrong type.
``save_config`` writes the resolved config next to a job's outputs, and ``config_hash`` identifies it.

Values in overrides are parsed as YAML scalars (``--set train.optim.lr_g=1e-4``,
``--set preprocess.fit.solver=reference_lsq``, ``--set preprocess.render.image_size=[256,256]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the config's schema; the message names the key."""


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it in the dataclass's form.

    Lists become tuples (configs are frozen); ints are accepted where floats are expected.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp)
        return types.MappingProxyType(
            {_convert(k, k_tp, key): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
        )
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config annotation {tp!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Builds the dataclass ``cls`` from a nested mapping; missing keys keep their defaults.

    Raises ConfigError naming the full dotted key for an unknown key or a wrongly typed value.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}' (known here: {', '.join(sorted(fields))})")
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a field without a default was not given
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-ready data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies one ``a.b.c=value`` override to a nested dict in place (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}': expected KEY=VALUE such as section.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Loads ``cls`` from an optional YAML file (local path or URI) and ``KEY=VALUE`` overrides."""
    data: dict[str, Any] = {}
    if path:
        from infra.storage import read_text

        loaded = yaml.safe_load(read_text(path))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(cls, data)


def config_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, uri: str) -> None:
    """Writes the resolved config as YAML to ``uri`` (a job's output folder holds ``config.yaml``)."""
    from infra.storage import write_text

    write_text(uri, config_yaml(cfg))


def config_hash(cfg: Any, length: int = 16) -> str:
    """A short stable hash of the config's values (hex), used to recognise work already done."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls: type, example: str, default_config: str | None = None
) -> None:
    """Adds ``--config``, ``--set KEY=VALUE`` (repeatable) and ``--dry-run`` to a job's parser.

    ``example`` (a ``KEY=VALUE`` of ``config_cls``) is shown in ``--help``; it is checked here, so a help
    text cannot show an override that the job rejects.
    """
    load_config(config_cls, None, [example])
    parser.add_argument("--config", default=default_config, help="YAML config (path or URI)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value, e.g. --set {example} (repeatable)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the plan, then exit"
    )


def parse_job_args(
    parser: argparse.ArgumentParser, config_cls: type[T], argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, T]:
    """Parses a job's command line and loads its config. A bad config file, key or value ends the
    process with one line naming it and exit status 2, as argparse does for bad arguments."""
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError, yaml.YAMLError) as err:
        message = " ".join(str(err).split())
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    return args, cfg


__all__ = [
    "ConfigError",
    "add_config_arguments",
    "apply_override",
    "config_hash",
    "config_yaml",
    "from_dict",
    "load_config",
    "parse_job_args",
    "save_config",
    "to_dict",
]
