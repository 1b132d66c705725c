"""Reading an experiment configuration: YAML files plus dotted command-line overrides.

Every key is declared in :mod:`ctsl_hpc.config.schema`; an unknown key or a value of the wrong
type raises :class:`ConfigError` naming the dotted key, before any work starts.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "student.lambda_tl=50"])
    >>> cfg.train.epochs, cfg.student.lambda_tl
    (3, 50.0)
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from ctsl_hpc.config.files import DEMO_CONFIG, ConfigFile, shipped_file
from ctsl_hpc.config.schema import ConfigError, ExperimentConfig
from ctsl_hpc.config.validation import validate


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` (converting int -> float), naming ``key`` on error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        for k in value:
            _require_printable(str(k), f"{key}.{k}")
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build_section(hint, value, key)
    if isinstance(value, str):
        _require_printable(value, key)
    if hint is Any:
        return value
    if hint is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            number = float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str and isinstance(value, int):  # YAML reads 077 as the octal number 63 and 77 as seventy-seven
        raise ConfigError(f"{key}: {value!r} was read as a number (YAML reads 077 as 63): quote it in a YAML file, "
                          f"{key}: \"027\", or give its leading zero on the command line, {key}=027")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _require_printable(text: str, key: str) -> None:
    """No control characters: names, paths and sbatch values end up in job scripts."""
    bad = sorted({repr(c) for c in text if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ConfigError(f"{key}: {text!r} holds control characters ({', '.join(bad)}); use one plain line")


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in names:
            raise ConfigError(f"unknown config key {key!r} (known: {sorted(names)})")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"a.b.c=value"`` into ``{"a": {"b": {"c": value}}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key")
    if _LEADING_ZERO.fullmatch(raw.strip()):  # 027: an octal mask, kept as written (YAML would make it 23)
        value: Any = raw.strip()
    else:
        value = yaml.safe_load(raw) if raw.strip() else None
    for key in reversed(keys):
        value = {key: value}
    return value


_LEADING_ZERO = re.compile(r"0[0-7]+")


def _read_yaml(path: ConfigFile) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def load_config(path: str | ConfigFile | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load ``path`` (a file, or the name of a shipped config; default: the demo), apply dotted
    overrides, validate."""
    if path is None:
        path = DEMO_CONFIG
    elif isinstance(path, (str, Path)):
        path = shipped_file(path)
    values = _read_yaml(path)
    for text in overrides:
        values = _merge(values, parse_override(text))
    cfg = build_section(ExperimentConfig, values)
    validate(cfg)
    return cfg


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys, e.g. ``{"a": {"b": 1}} -> {"a.b": 1}`` (empty mappings kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a validated config from :meth:`ExperimentConfig.to_dict` output (a work directory's saved
    config; one saved before the umask was a string holds it as the number it meant)."""
    if isinstance(values.get("umask"), int) and not isinstance(values["umask"], bool):
        values = {**values, "umask": f"{values['umask']:03o}"}
    cfg = build_section(ExperimentConfig, values)
    validate(cfg)
    return cfg
