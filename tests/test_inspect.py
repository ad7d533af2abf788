"""`lumenlm inspect`: attention maps and logit lens agree with the model; bad sizes and
output paths are refused in one line before any work."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumenlm.cli import main
from lumenlm.inspect import inspect_text
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from lumenlm.presets import get_preset
from model_helpers import one_line_error


def _model_dir(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["the cat sat on the mat. " * 20, "a dog ran in the park. " * 20], trainer
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = get_preset("lumiere-1m").model.replace(vocab_size=tok.get_vocab_size())
    save_model(GPT(cfg), tmp_path / "m", tokenizer_path=tmp_path / "tokenizer.json")
    return tmp_path / "m"


def test_inspection_matches_model(tmp_path) -> None:
    model = load(_model_dir(tmp_path))
    ins = inspect_text(model, "the cat sat on the mat")
    T = len(ins.ids)
    assert len(ins.attentions) == 4 and ins.attentions[0].shape == (4, T, T)
    assert len(ins.hidden_states) == 5
    # The last logit-lens entry is exactly the model's output distribution.
    logits = model(torch.tensor([ins.ids])).logits[0]
    torch.testing.assert_close(
        ins.lens_logprobs[-1], torch.log_softmax(logits, -1), rtol=1e-5, atol=1e-5
    )


def test_cli_writes_png_and_json(tmp_path, capsys) -> None:
    mdir = _model_dir(tmp_path)
    assert main(["inspect", str(mdir), "--text", "the dog ran", "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "inspect.json").read_text())
    assert doc["tokens"] and len(doc["layers"]) == 4 and len(doc["logit_lens"]) == 5
    for name in ("attention.png", "logit_lens.png"):
        assert (tmp_path / "o" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("top_k", ["0", "-3", "vocab + 1"])
def test_top_k_out_of_range_is_one_line(tmp_path, capsys, top_k: str) -> None:
    mdir = _model_dir(tmp_path)
    vocab = load(mdir).config.vocab_size
    top_k = str(vocab + 1) if top_k == "vocab + 1" else top_k
    argv = ["inspect", str(mdir), "--text", "the dog", "--out", str(tmp_path / "o")]
    assert main([*argv, "--top-k", top_k]) == 2
    one_line_error(capsys.readouterr().err, "--top-k must be", f"got {top_k}")
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main([*argv, "--top-k", str(vocab)]) == 0


def test_unwritable_out_refused_before_loading(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr("lumenlm.modelio.load", lambda *a, **k: pytest.fail("loaded"))
    for out in (tmp_path / "afile", tmp_path / "afile" / "o"):
        assert main(["inspect", str(tmp_path), "--text", "a", "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, f"--out {out}")
