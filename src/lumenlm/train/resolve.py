"""Resolve a run's configuration: preset, optional config file, `--set` overrides.

Override keys may be qualified (`train.lr`, `model.d_model`) or bare (`lr`,
`d_model`); bare names are looked up in TrainConfig and ModelConfig, and a name in
neither (or, hypothetically, both) is a one-line error listing close matches.
`dropout` / `model.dropout` sets all three dropout rates at once.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig, apply_overrides, parse_value, read_mapping
from lumenlm.errors import ConfigError
from lumenlm.presets import get_preset

_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} | {"dropout"}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


# Names other trainers use (nanoGPT, HF) -> ours, for "did you mean" hints only.
_ALIASES = {
    "learning_rate": "lr",
    "max_iters": "max_steps",
    "epochs": "max_epochs",
    "num_epochs": "max_epochs",
    "patience": "early_stopping_patience",
    "clip": "grad_clip",
    "max_grad_norm": "grad_clip",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_steps",
    "block_size": "context_length",
    "n_embd": "d_model",
    "n_layer": "n_layers",
    "n_head": "n_heads",
    "eval_iters": "eval_batches",
}


def _close(key: str) -> str:
    names = sorted(
        _MODEL_KEYS
        | _TRAIN_KEYS
        | {f"model.{k}" for k in _MODEL_KEYS}
        | {f"train.{k}" for k in _TRAIN_KEYS}
    )
    bare = key.rpartition(".")[2]
    near = [_ALIASES[bare]] if bare in _ALIASES else []
    near += [n for n in difflib.get_close_matches(key, names, n=3, cutoff=0.6) if n not in near]
    return f"; did you mean {', '.join(near)}?" if near else ""


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """{key: value} with qualified or bare keys -> (model overrides, train overrides)."""
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section == "model" and name in _MODEL_KEYS:
            model[name] = value
        elif section == "train" and name in _TRAIN_KEYS:
            train[name] = value
        elif section == "" and name in _TRAIN_KEYS and name in _MODEL_KEYS:
            raise ConfigError(f"config key {key!r} is ambiguous; write train.{key} or model.{key}")
        elif section == "" and name in _TRAIN_KEYS:
            train[name] = value
        elif section == "" and name in _MODEL_KEYS:
            model[name] = value
        else:
            raise ConfigError(f"unknown config key {key!r}{_close(key)}")
    return model, train


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-3", "model.d_model=128"]` -> {"lr": 0.001, "model.d_model": 128}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}; use e.g. --set lr=3e-4")
        out[key.strip()] = parse_value(text)  # numbers like 1e30 too (YAML 1.1 would not)
    return out


def _apply_model(cfg: ModelConfig, over: dict[str, Any]) -> ModelConfig:
    over = dict(over)
    if "dropout" in over:
        p = over.pop("dropout")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            over.setdefault(name, p)
    # apply_overrides -> ModelConfig.replace: re-derives only the fields that were
    # derived (d_head, d_value, n_kv_heads) and keeps explicit ones.
    return apply_overrides(cfg, over, prefix="model.")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A run's configuration, with the data directory a config file may name."""

    preset: str | None
    model: ModelConfig
    train: TrainConfig
    data_dir: str | None = None


def resolve(
    preset: str | None,
    config_file: str | Path | None,
    model_over: dict[str, Any],
    train_over: dict[str, Any],
) -> Resolved:
    """The configuration from a preset, a YAML/JSON file (read once) and overrides.

    The file may hold `preset:`, `model:`, `train:` and `data:` sections; its sections
    override the preset, and the overrides (bare field names, already split by
    `split_overrides`, values typed) override both.
    """
    file_model: dict[str, Any] = {}
    file_train: dict[str, Any] = {}
    data_dir = None
    if config_file is not None:
        doc = read_mapping(config_file)
        unknown = sorted(set(doc) - {"preset", "model", "train", "data", "data_dir"})
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown section(s) {', '.join(unknown)}; "
                "expected preset, model, train"
            )
        preset = preset or doc.get("preset")
        file_model = dict(doc.get("model") or {})
        file_train = dict(doc.get("train") or {})
        data_dir = doc.get("data") or doc.get("data_dir")
    if preset is None and not file_model:
        raise ConfigError("give --preset NAME or a --config file with a model: section")
    if preset is not None:
        p = get_preset(preset)
        model_cfg, train_cfg = p.model, p.train
    else:
        model_cfg, train_cfg = ModelConfig(), TrainConfig()
    if file_model:
        model_cfg = _apply_model(model_cfg, file_model)
    if file_train:
        train_cfg = apply_overrides(train_cfg, file_train, prefix="train.")
    if model_over:
        model_cfg = _apply_model(model_cfg, model_over)
    if train_over:
        train_cfg = apply_overrides(train_cfg, train_over, prefix="train.")
    return Resolved(preset, model_cfg, train_cfg, None if data_dir is None else str(data_dir))


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[str | None, ModelConfig, TrainConfig]:
    """(preset name, ModelConfig, TrainConfig) with `overrides` keyed as `--set` takes
    them (`lr`, `train.lr`, `model.d_model`, `dropout`)."""
    r = resolve(preset, config_file, *split_overrides(overrides or {}))
    return r.preset, r.model, r.train
