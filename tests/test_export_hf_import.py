"""`lumenlm import`: random GPT-2 and Llama family checkpoints built with transformers
(tied and untied, MHA/GQA/MQA, biases, head_dim != hidden/heads, exact and tanh GELU)
import with transformers' logits to 1e-4; export -> import -> export writes the same
weight bytes; the byte-level tokenizer comes along and SentencePiece-style ones are
refused with the reason; a config field lumenlm cannot reproduce is one line naming it.
The imported model then evaluates, inspects, fine-tunes, serves and exports (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export_helpers import TEXTS, arch_model_dir, make_chat_tokenizer
from lumenlm.cli import main
from lumenlm.data.tokenizer import encode
from lumenlm.errors import LumenError
from lumenlm.export.hf import export_hf
from lumenlm.export.hf_import import import_hf
from lumenlm.modelio import load
from model_helpers import one_line_error

transformers = pytest.importorskip("transformers")

V = 400
BASE = {"bos_token_id": 0, "eos_token_id": 0}
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4, **BASE
    ),
    "gpt2-untied-exact-gelu-n_inner": lambda: transformers.GPT2Config(
        vocab_size=V,
        n_positions=48,
        n_embd=48,
        n_layer=1,
        n_head=3,
        n_inner=80,
        activation_function="gelu",
        tie_word_embeddings=False,
        **BASE,
    ),
    "llama-mqa-tied": lambda: transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rope_theta=5e5,
        tie_word_embeddings=True,
        **BASE,
    ),
    "llama-gqa-biases-head_dim": lambda: transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=64,
        **BASE,
    ),
}


def _hf_dir(root: Path, name: str, tokenizer: bool = True) -> tuple[Path, object]:
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n or "ln" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    out = root / name
    hf.save_pretrained(out)
    if tokenizer:
        make_chat_tokenizer(out / "tokenizer.json", V)
    return out, hf


@pytest.mark.parametrize("name", list(CONFIGS))
def test_import_matches_transformers_and_round_trips_bytes(tmp_path, name: str) -> None:
    src, hf = _hf_dir(tmp_path, name)
    m = load(import_hf(src, tmp_path / "lm"))
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        assert (m(x).logits - hf(x).logits).abs().max() < 1e-4
    theirs = transformers.AutoTokenizer.from_pretrained(src)
    for text in TEXTS:
        assert encode(m.tokenizer, text) == theirs(text)["input_ids"]
    e1 = export_hf(m, tmp_path / "e1")
    i2 = import_hf(e1, tmp_path / "lm2")
    e2 = export_hf(load(i2), tmp_path / "e2")
    assert (e1 / "model.safetensors").read_bytes() == (e2 / "model.safetensors").read_bytes()
    lm, lm2 = tmp_path / "lm" / "model.safetensors", i2 / "model.safetensors"
    assert lm.read_bytes() == lm2.read_bytes()  # import -> export -> import is stable too


def test_lumiere_export_imports_back_with_its_chat_template(tmp_path) -> None:
    model = load(arch_model_dir(tmp_path, "lumiere"))
    e1 = export_hf(model, tmp_path / "e1")
    back = load(import_hf(e1, tmp_path / "lm"))
    assert back.config == model.config
    assert back.meta["chat"] == model.meta["chat"]
    assert (back.model_dir / "tokenizer.json").read_bytes() == (
        model.model_dir / "tokenizer.json"
    ).read_bytes()
    e2 = export_hf(back, tmp_path / "e2")
    assert (e1 / "model.safetensors").read_bytes() == (e2 / "model.safetensors").read_bytes()


def test_gpt2_vocab_and_merges_files_become_a_tokenizer(tmp_path) -> None:
    src, _ = _hf_dir(tmp_path, "gpt2")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    doc = json.loads((src / "tokenizer.json").read_text())
    (src / "vocab.json").write_text(json.dumps(doc["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (src / "tokenizer.json").unlink()
    m = load(import_hf(src, tmp_path / "lm"))
    for text in TEXTS:
        assert encode(m.tokenizer, text) == fast(text, add_special_tokens=False)["input_ids"]


def test_sentencepiece_style_tokenizer_is_refused_with_the_reason(tmp_path, capsys) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers

    src, _ = _hf_dir(tmp_path, "llama-mqa-tied")
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": b + 1 for b in range(256)}, "▁a": 257}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.ByteFallback()
    tok.save(str(src / "tokenizer.json"))
    capsys.readouterr()  # transformers' save progress
    argv = ["import", str(src), "--out", str(tmp_path / "lm")]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, "byte-fallback (SentencePiece-style)", "--no-tokenizer")
    assert not (tmp_path / "lm").exists()
    assert main([*argv, "--no-tokenizer"]) == 0
    assert load(tmp_path / "lm").tokenizer is None


@pytest.mark.parametrize(
    "name,field,value",
    [
        ("llama-mqa-tied", "rope_scaling", {"rope_type": "linear", "factor": 2.0}),
        ("llama-mqa-tied", "sliding_window", 16),
        ("llama-mqa-tied", "hidden_act", "gelu"),
        ("llama-mqa-tied", "use_parallel_residual", True),
        ("gpt2", "activation_function", "relu"),
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
    ],
)
def test_unsupported_field_is_one_line_naming_it(tmp_path, capsys, name, field, value) -> None:
    src, _ = _hf_dir(tmp_path, name, tokenizer=False)
    doc = json.loads((src / "config.json").read_text())
    doc[field] = value
    (src / "config.json").write_text(json.dumps(doc))
    capsys.readouterr()  # transformers' save progress
    assert main(["import", str(src), "--out", str(tmp_path / "lm")]) == 2
    one_line_error(capsys.readouterr().err, f"config.json {field}=", "not supported")
    assert not (tmp_path / "lm").exists()


def test_rope_parameters_with_scaling_are_refused(tmp_path) -> None:
    src, _ = _hf_dir(tmp_path, "llama-mqa-tied", tokenizer=False)
    doc = json.loads((src / "config.json").read_text())
    doc["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    (src / "config.json").write_text(json.dumps(doc))
    with pytest.raises(LumenError, match="rope_parameters.rope_type"):
        import_hf(src, tmp_path / "lm")


@pytest.mark.slow
def test_imported_model_evaluates_inspects_finetunes_serves_and_exports(tmp_path) -> None:
    import numpy as np

    from infer_helpers import serve_app
    from lumenlm.infer.server import create_app
    from model_helpers import write_dataset

    src, _ = _hf_dir(tmp_path, "llama-mqa-tied")
    mdir = tmp_path / "lm"
    assert main(["import", str(src), "--out", str(mdir)]) == 0
    tok = mdir / "tokenizer.json"
    data = write_dataset(tmp_path / "data", np.arange(600) % V, vocab=V, tokenizer=tok)
    assert main(["eval", str(mdir), "--data", str(data), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())
    assert main(["inspect", str(mdir), "--text", TEXTS[0], "--out", str(tmp_path / "i")]) == 0
    assert (tmp_path / "i" / "inspect.json").is_file()
    chats = tmp_path / "chat.jsonl"
    row = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    chats.write_text("\n".join(json.dumps(row) for _ in range(40)) + "\n")
    ft = ["finetune", str(mdir), "--data", str(chats), "--out", str(tmp_path / "runs")]
    assert main([*ft, "--set", "max_steps=2", "--no-progress"]) == 0
    model = load(mdir)
    import httpx

    for url in serve_app(create_app(model, model.tokenizer)):
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "Once", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
    assert main(["export", str(mdir), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(mdir), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
