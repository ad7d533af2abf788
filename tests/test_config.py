"""ModelConfig validation and JSON/YAML round trips."""

from __future__ import annotations

import pytest

from lumenlm.config import ModelConfig, TrainConfig, apply_overrides, load_config, save_config
from lumenlm.errors import ConfigError
from lumenlm.presets import get_preset, preset_names


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("name", preset_names())
def test_round_trip(tmp_path, name: str, suffix: str) -> None:
    preset = get_preset(name)
    path = tmp_path / f"model{suffix}"
    save_config(preset.model, path)
    assert load_config(ModelConfig, path) == preset.model
    save_config(preset.train, tmp_path / f"train{suffix}")
    assert load_config(TrainConfig, tmp_path / f"train{suffix}") == preset.train


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 100, "n_heads": 3}, "does not divide d_model"),
        ({"n_heads": 4, "n_kv_heads": 3, "d_model": 64}, "must divide n_heads"),
        ({"norm": "batchnorm"}, "norm='batchnorm' is not one of"),
        ({"activation": "relu"}, "activation"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"positions": "rope", "d_head": 33, "d_model": 64, "n_heads": 2}, "even d_head"),
        ({"attn_dropout": 1.5}, "attn_dropout"),
    ],
)
def test_validation_errors_are_one_line(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ModelConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_key(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"d_modle": 64}')
    with pytest.raises(ConfigError, match="unknown ModelConfig key.*d_modle"):
        load_config(ModelConfig, path)


def test_bad_json_names_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(ModelConfig, path)


def test_overrides() -> None:
    cfg = apply_overrides(get_preset("tiny").model, {"d_model": 128, "n_heads": 8})
    assert cfg.d_model == 128 and cfg.d_head == 16
    cfg = apply_overrides(get_preset("tiny-gpt2").model, {"d_model": 256})
    assert (cfg.d_head, cfg.d_value, cfg.n_kv_heads) == (64, 64, 4)
    cfg = get_preset("tiny-gpt2").model.replace(n_heads=8)
    assert (cfg.d_head, cfg.n_kv_heads) == (8, 8)
    lumiere = get_preset("lumiere-1m").model.replace(d_model=256)
    assert lumiere.d_head == 64  # was derived (128 / 4): follows d_model
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(cfg, {"dmodel": 1})


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError, match="librarian-1.3m"):
        get_preset("gpt5")


def test_distinct_dkey_dvalue() -> None:
    cfg = ModelConfig(
        d_model=64, n_heads=4, d_head=8, d_value=24, vocab_size=50, context_length=16, d_ff=32
    )
    assert (cfg.d_head, cfg.d_value) == (8, 24)


def test_wrong_scalar_types_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="d_model must be int, got '64'"):
        ModelConfig(d_model="64")
    with pytest.raises(ConfigError, match="tie_embeddings must be bool"):
        ModelConfig(tie_embeddings="yes")
    with pytest.raises(ConfigError, match="train.lr must be float"):
        TrainConfig(lr="fast")
    with pytest.raises(ConfigError, match="train.lr must be a positive finite"):
        TrainConfig(lr=float("nan"))


def test_parse_value_numbers() -> None:
    from lumenlm.config import parse_value

    assert parse_value("2e-4") == 2e-4 and parse_value("16") == 16 and parse_value("x") == "x"
