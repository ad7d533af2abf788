"""Config dataclasses to and from mappings and JSON/YAML files.

Configs arrive as mappings from files, saved runs and `--set`, so this is where an
unknown key or a value of the wrong scalar type is caught, with a one-line
`ConfigError` naming the key (and the file), before any arithmetic on it fails obscurely.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from lumenlm.errors import ConfigError, first_line

T = TypeVar("T")

_SCALARS: dict[str, Any] = {"int": int, "float": (int, float), "bool": bool, "str": str}


def check_types(config: Any, prefix: str = "") -> None:
    """Reject values of the wrong scalar type (JSON/YAML can carry "64" where 64 belongs)
    with a one-line error, before any arithmetic on them fails obscurely."""
    for f in fields(config):
        value = getattr(config, f.name)
        name = str(f.type).split(" | ")[0]
        expected = _SCALARS.get(name)
        if value is None or expected is None:
            continue
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise ConfigError(
                f"{prefix}{f.name} must be {name}, got {value!r}; give a {name} value"
            )


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a clear error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__}: {exc}") from None


def save_config(config: Any, path: str | Path) -> None:
    """Write a dataclass config as JSON or YAML (by file extension)."""
    path = Path(path)
    data = dataclasses.asdict(config)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping, with a one-line error naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; check the --config path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({first}); fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping at the top level; use sections like model: and train:"
        )
    return data


def load_config(cls: type[T], path: str | Path) -> T:
    """Load dataclass `cls` from a JSON/YAML file."""
    try:
        return from_dict(cls, read_mapping(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
