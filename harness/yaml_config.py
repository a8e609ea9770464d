"""Typed configs from YAML: a dataclass's fields read from a file, each mistake one clear line.

A leaf module: the run configuration (harness/run/config.py) and the BC trainer
(policies/bc_training.py) share it.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError


def yaml_fields(cls: type, path: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """A config dataclass's fields from a YAML file (unknown keys refused), flags (not None) on top."""
    data = load_yaml_mapping(path)
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HarnessError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def construct(cls: type, path: str | Path, data: dict[str, Any]) -> Any:
    """``cls(**data)``, a wrong type or a missing field becoming one line naming the file."""
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in data]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise HarnessError(f"{path}: missing key(s) {', '.join(missing)}: add them to the file or pass {flags}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise HarnessError(f"{path}: {exc}") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise HarnessError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HarnessError(f"config {str(path)!r} is not text (not UTF-8): give a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise HarnessError(f"config {str(path)!r} nests too deeply to be a config: fix the syntax") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise HarnessError(f"config {str(path)!r} is not valid YAML{at}: fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HarnessError(f"config {str(path)!r} must be a mapping of keys to values, got {type(data).__name__}")
    return data
