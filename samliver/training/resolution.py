"""Resolving a `TrainConfig`: defaults <- YAML file <- command-line overrides.

Keys are `TrainConfig`'s fields (YAML may spell them with hyphens). An unknown key, at any level, is an
error naming the closest known key (``difflib``). Without ``--config`` the preset
``configs/train/<method>.yaml`` is used where it exists, so ``train_adapter.py --method lora`` runs the
default main job.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from .config import ConfigError, TrainConfig


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``5e-4`` as a float as YAML 1.2 does (PyYAML follows YAML 1.1, which
    wants a dot, ``5.0e-4``, and leaves ``5e-4`` a string)."""


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """A config's YAML text (a file, a ``--set`` value) as Python values."""
    return yaml.load(text, Loader=_ConfigLoader)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (ints are accepted where floats are)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a valid value ({'; '.join(errors)})")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return _build(hint, value, prefix=f"{key}.")
    base = origin or hint
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    elif base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):  # "0.8,0.2" from the command line
            return [load_yaml(v) for v in value.split(",")]
    elif base is dict:
        if isinstance(value, Mapping):
            return dict(value)
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """A ``cls`` dataclass from ``values`` over its defaults; unknown keys refused with a suggestion."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(raw_key)!r}{_suggest_prefixed(key, fields, prefix)}")
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def _suggest_prefixed(key: str, fields: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else f"; known: {', '.join(prefix + f for f in fields)}"


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings merge key by key (``method_config`` too)."""
    out = dict(base)
    for key, value in overrides.items():
        key = str(key).replace("-", "_")
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping. ``path`` may also name a preset: ``lora`` -> ``configs/train/lora.yaml``."""
    file = Path(path)
    if not file.is_file() and file.suffix == "" and "/" not in str(path):
        from samliver import configs

        try:
            file = configs.path("train", str(path))
        except ValueError as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
    try:
        data = load_yaml(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{file}: unreadable config ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: a training config must be a mapping of keys to values")
    return dict(data)


def preset_for(method: str) -> Path | None:
    """``configs/train/<method>.yaml`` if it exists."""
    from samliver import configs

    candidate = configs.ROOT / "train" / f"{method}.yaml"
    return candidate if candidate.is_file() else None


def resolve(config_file: str | Path | None, overrides: Mapping[str, Any]) -> tuple[TrainConfig, str | None]:
    """The validated config from a file (or the method's preset) and overrides.

    Returns:
        ``(config, the file used or None)``.
    """
    values: dict[str, Any] = {}
    used = None
    if config_file is None:
        method = overrides.get("method", TrainConfig.method)
        preset = preset_for(str(method))
        if preset is not None:
            config_file = preset
    if config_file is not None:
        values = read_yaml(config_file)
        used = str(config_file)
    values = merge(values, overrides)
    return _build(TrainConfig, values).validate(), used


def parse_assignment(text: str, what: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``3``, ``true``, ``[qkv, proj]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} {text!r}: expected KEY=VALUE")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().replace("-", "_"), value


def dotted(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out
