"""lumenlm: build small GPT-style language models from scratch, end to end.

Importing the package has no side effects and does not import torch; the public
names below are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "lumenlm.config",
    "TrainConfig": "lumenlm.config",
    "Preset": "lumenlm.config",
    "get_preset": "lumenlm.presets",
    "preset_names": "lumenlm.presets",
    "count_parameters": "lumenlm.presets",
    "GPT": "lumenlm.model",
    "KVCache": "lumenlm.model",
    "load": "lumenlm.modelio",
    "save_model": "lumenlm.modelio",
    "LumenError": "lumenlm.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lumenlm' has no attribute {name!r}")
