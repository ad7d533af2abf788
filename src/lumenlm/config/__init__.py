"""Configuration: the model architecture, the training recipe, and their files.

Everything a run is configured by is a plain dataclass here, so configs round-trip
through JSON and YAML and every impossible value raises `ConfigError` with a one-line
message. This package sits at the bottom of the layers: it imports nothing of lumenlm
but `lumenlm.errors`, so every other module may use it.

- `choices`: the string choice lists (`Norm`, `Schedule`, `Precision`, ...), named once.
- `model_config`, `train_config`: `ModelConfig` and `TrainConfig`, a docstring per field.
- `mapping`: mappings and JSON/YAML files to configs and back.
- `overrides`: `--set key=value` parsing and application.
- `docs`: reads the field docstrings back (for `presets --show` and `--help`); imported
  on demand, not here.
"""

from __future__ import annotations

from lumenlm.config.choices import (
    Activation,
    Dtype,
    EarlyStoppingOn,
    Init,
    Norm,
    OptimizerName,
    Positions,
    Precision,
    Schedule,
    Strategy,
    check_choice,
)
from lumenlm.config.mapping import from_dict, load_config, read_mapping, save_config
from lumenlm.config.model_config import ModelConfig
from lumenlm.config.overrides import apply_overrides, parse_value
from lumenlm.config.preset import Preset
from lumenlm.config.train_config import TrainConfig

__all__ = [
    "Activation",
    "Dtype",
    "EarlyStoppingOn",
    "Init",
    "ModelConfig",
    "Norm",
    "OptimizerName",
    "Positions",
    "Precision",
    "Preset",
    "Schedule",
    "Strategy",
    "TrainConfig",
    "apply_overrides",
    "check_choice",
    "from_dict",
    "load_config",
    "parse_value",
    "read_mapping",
    "save_config",
]
