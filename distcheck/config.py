"""Settings for analysis and rules: ``default.yaml`` overlaid with the user's file.

The default file is the schema: a key it does not have is unknown, and a value must
have the type of the default (an int may stand for a float; ``null`` defaults accept
lists). Every problem is a :class:`ConfigError` naming the file and the key.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Optional

import yaml

from distcheck.replicas import Declaration, DeclarationError

DEFAULT_PATH = os.path.join(os.path.dirname(__file__), "default.yaml")


class ConfigError(Exception):
    pass


def load_config(path: Optional[str] = None) -> dict[str, Any]:
    config = _read(DEFAULT_PATH)
    if path is None:
        return config
    user = _read(path)
    _merge(config, user, path, prefix="")
    _check_replica_groups(config.get("replica_groups"), path)
    _check_labels(config.get("labels"), path)
    return config


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def _merge(base: dict, user: dict, path: str, prefix: str) -> None:
    for key, value in user.items():
        where = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(str(k) for k in base))
            raise ConfigError(f"{path}: unknown setting '{where}' (known here: {known})")
        default = base[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: '{where}' must be a mapping")
            _merge(default, value, path, prefix=f"{where}.")
            continue
        base[key] = _coerce(default, value, path, where)


def _coerce(default: Any, value: Any, path: str, where: str) -> Any:
    if default is None or value is None:
        return copy.deepcopy(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(default, int) and not isinstance(default, bool) and not float(value).is_integer():
                raise ConfigError(f"{path}: '{where}' must be a whole number, got {value!r}")
            if value < 0:
                raise ConfigError(f"{path}: '{where}' must not be negative, got {value!r}")
            return type(default)(value)
    elif isinstance(default, type(value)):
        return value
    raise ConfigError(f"{path}: '{where}' must be {type(default).__name__}, got {value!r}")


def _check_labels(labels: Any, path: str) -> None:
    if labels is None or labels == "none" or (isinstance(labels, int) and not isinstance(labels, bool)):
        return
    raise ConfigError(f"{path}: 'labels' must be null (the last 1-D integer tensor), an index into the batch "
                      f"such as 1 or -1, or \"none\"; got {labels!r}")


def _check_replica_groups(groups: Any, path: str) -> None:
    try:
        Declaration.parse(groups)
    except DeclarationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
