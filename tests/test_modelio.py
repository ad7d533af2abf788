"""Save/load model directories: identical logits, no pickles, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lumenlm.errors import CheckpointError
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from lumenlm.presets import get_preset


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "lumiere-1m"])
def test_save_load_identical_logits(tmp_path, name: str) -> None:
    model = GPT(get_preset(name).model).eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load(tmp_path / "m")
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(model(x).logits, loaded(x).logits)
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_run_dir_resolves_best(tmp_path) -> None:
    model = GPT(get_preset("tiny").model)
    save_model(model, tmp_path / "run" / "checkpoints" / "best")
    assert load(tmp_path / "run").config == model.config


def test_corrupt_weights_names_file(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(tmp_path / "m")


def test_truncated_weights(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(tmp_path / "m")


def test_mismatched_config_names_file(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["model"]["d_ff"] = 96
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*shape"):
        load(tmp_path / "m")


def test_corrupt_config(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        load(tmp_path / "m")


def test_missing_dir() -> None:
    with pytest.raises(CheckpointError, match="no such"):
        load("/nonexistent/model")


def test_never_unpickles(tmp_path, monkeypatch) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    import pickle

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load(tmp_path / "m")


def test_strips_compile_prefix(tmp_path) -> None:
    model = GPT(get_preset("tiny").model).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    save_model(Wrapper(model), tmp_path / "m")
    x = torch.randint(0, 512, (1, 8))
    assert torch.equal(load(tmp_path / "m")(x).logits, model(x).logits)
