"""`--set key=value` values and their application to a config.

An override is a value typed on the command line (or a config file section) applied to
a preset's config, so it is parsed here the way a user means it (`2e-4` is a number) and
applied with the same validation as a config built from scratch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, TypeVar

from lumenlm.config.mapping import from_dict
from lumenlm.config.model_config import ModelConfig
from lumenlm.errors import ConfigError

T = TypeVar("T")


def parse_value(text: str) -> Any:
    """Parse a `--set key=value` value: JSON/YAML scalars (numbers like `2e-4` included,
    which YAML 1.1 would leave as strings), else the raw string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass `config` with `overrides` applied and validated."""
    names = {f.name for f in fields(config)}  # type: ignore[arg-type]
    for key in overrides:
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix}{key!r}; known keys: {', '.join(sorted(names))}"
            )
    if isinstance(config, ModelConfig):
        return config.replace(**overrides)  # type: ignore[return-value]
    data = dataclasses.asdict(config)  # type: ignore[call-overload]
    data.update(overrides)
    return from_dict(type(config), data)
