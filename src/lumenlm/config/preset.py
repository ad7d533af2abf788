"""`Preset`: a named architecture plus the training recipe from its model card.

The record lives with the configs it bundles; the built-in presets themselves are in
`lumenlm.presets`, which builds them from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lumenlm.config.model_config import ModelConfig
from lumenlm.config.train_config import TrainConfig


@dataclass
class Preset:
    """A named architecture plus the training recipe from its model card."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: str | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
