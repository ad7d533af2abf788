"""Export parity: our logits equal transformers' GPT2LMHeadModel / LlamaForCausalLM; a
tokenizer that does not fit the model, or an unwritable --out, is one line."""

from __future__ import annotations

import pytest
import torch

from lumenlm.cli import main
from lumenlm.errors import LumenError
from lumenlm.export.hf import export_hf
from lumenlm.model import GPT
from lumenlm.modelio import load
from lumenlm.presets import get_preset
from model_helpers import make_tokenizer, model_dir, one_line_error

transformers = pytest.importorskip("transformers")


def _roundtrip(model: GPT, tmp_path) -> float:
    out = export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, trust_remote_code=True
    ).eval()
    x = torch.randint(0, model.config.vocab_size, (2, min(48, model.config.context_length)))
    with torch.no_grad():
        ours = model(x).logits
        theirs = hf(x).logits
    return (ours - theirs).abs().max().item(), type(hf).__name__


def _perturb(model: GPT) -> GPT:
    """Random norm weights/biases so the test also checks their mapping."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_librarian_to_gpt2(tmp_path) -> None:
    model = _perturb(GPT(get_preset("librarian-1.3m").model))
    diff, cls = _roundtrip(model, tmp_path)
    assert cls == "GPT2LMHeadModel"
    assert diff < 1e-4


@pytest.mark.parametrize("kv_heads,theta", [(4, 10000.0), (2, 500000.0), (1, 10000.0)])
def test_lumenbase_style_to_llama(tmp_path, kv_heads: int, theta: float) -> None:
    # lumenbase-128m's architecture at a size that runs in a second.
    base = get_preset("lumenbase-128m").model.with_dropout(0.0)
    cfg = base.replace(
        vocab_size=1000,
        d_model=192,
        n_layers=2,
        n_heads=12,
        n_kv_heads=kv_heads,
        d_head=16,
        d_ff=384,
        context_length=128,
        rope_theta=theta,
    )
    diff, cls = _roundtrip(_perturb(GPT(cfg)), tmp_path)
    assert cls == "LlamaForCausalLM"
    assert diff < 1e-4


def test_llama_with_head_dim_not_d_model_over_heads(tmp_path) -> None:
    cfg = get_preset("tiny").model.replace(d_head=32)
    diff, _ = _roundtrip(_perturb(GPT(cfg)), tmp_path)
    assert diff < 1e-4


@pytest.mark.parametrize(
    "changes",
    [
        {},  # Lumiere itself: learned positions + RMSNorm + SwiGLU, d_head 32
        {"pre_norm": False, "lm_head_bias": True, "tie_embeddings": False},
        {"positions": "rope", "n_kv_heads": 2, "activation": "gelu_tanh", "d_value": 16},
    ],
)
def test_lumiere_and_other_unstocked_configs_load_as_remote_code(tmp_path, changes) -> None:
    cfg = get_preset("lumiere-1m").model.with_dropout(0.0).replace(vocab_size=500, **changes)
    diff, cls = _roundtrip(_perturb(GPT(cfg)), tmp_path)
    assert cls == "LumenLMForCausalLM"
    assert diff < 1e-4
    code = (tmp_path / "hf" / "modeling_lumenlm.py").read_text()
    assert "lumenlm." not in code.replace("modeling_lumenlm", "").replace(
        "configuration_lumenlm", ""
    )


def test_export_never_deletes_foreign_or_source_dirs(tmp_path) -> None:
    from lumenlm.modelio import load, save_model

    save_model(GPT(get_preset("tiny-gpt2").model), tmp_path / "m")
    model = load(tmp_path / "m")
    victim = tmp_path / "victim"
    (victim / "notes").mkdir(parents=True)
    (victim / "notes" / "thesis.txt").write_text("important")
    with pytest.raises(LumenError, match="already exists"):
        export_hf(model, victim)
    assert (victim / "notes" / "thesis.txt").read_text() == "important"
    with pytest.raises(LumenError, match="model's own directory"):
        export_hf(model, tmp_path / "m", force=True)
    assert load(tmp_path / "m").config == model.config
    export_hf(model, tmp_path / "hf")
    with pytest.raises(LumenError, match="already exists; choose a new path or pass --force"):
        export_hf(model, tmp_path / "hf")
    export_hf(model, tmp_path / "hf", force=True)  # an earlier export is replaced
    export_hf(model, victim, force=True)
    assert not (victim / "notes").exists()


def test_tokenizer_of_another_size_or_unwritable_out_is_one_line(tmp_path, capsys) -> None:
    mdir = model_dir(tmp_path / "m", tokenizer=make_tokenizer(tmp_path / "t.json"))
    small = make_tokenizer(tmp_path / "t280.json", 280)
    with pytest.raises(LumenError, match="280 tokens, but the model's vocab_size is 300"):
        export_hf(GPT(get_preset("tiny").model.replace(vocab_size=300)), tmp_path / "x", small)
    argv = ["export", str(mdir), "--out", str(tmp_path / "hf")]
    assert main([*argv, "--tokenizer", str(small)]) == 2
    one_line_error(capsys.readouterr().err, "280 tokens")
    assert main([*argv, "--tokenizer", str(tmp_path / "none.json")]) == 2
    one_line_error(capsys.readouterr().err, "no such file")
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(mdir), "--out", str(tmp_path / "afile" / "hf")]) == 2
    one_line_error(capsys.readouterr().err, "is not a directory")
    assert not (tmp_path / "hf").exists() and main(argv) == 0


def test_padded_model_exports_with_its_own_smaller_tokenizer(tmp_path) -> None:
    tok = make_tokenizer(tmp_path / "t.json", 280)
    mdir = model_dir(tmp_path / "m", tokenizer=tok, vocab=320)  # saved together: padding
    out = export_hf(load(mdir), tmp_path / "hf")
    assert (out / "tokenizer.json").read_bytes() == tok.read_bytes()
    with pytest.raises(LumenError, match="280 tokens, but the model's vocab_size is 320"):
        export_hf(GPT(get_preset("tiny").model.replace(vocab_size=320)), tmp_path / "x", tok)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "lumiere"])
def test_every_export_tokenizes_chats_and_carries_its_card(tmp_path, arch: str) -> None:
    """AutoTokenizer encodes our ids, apply_chat_template renders our template, the card
    is README.md, every file is 0644 (umask 022), and logits match."""
    import os
    import stat

    from export_helpers import CONVERSATIONS, TEXTS, arch_model_dir
    from lumenlm.data.chat_template import TURNS
    from lumenlm.data.tokenizer import encode

    old = os.umask(0o022)
    try:
        model = load(arch_model_dir(tmp_path, arch))
        out = export_hf(model, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert "# A test card" in (out / "README.md").read_text()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tok(text)["input_ids"] == encode(model.tokenizer, text), text
    for messages in CONVERSATIONS:
        for gen in (True, False):
            ids = tok.apply_chat_template(messages, add_generation_prompt=gen)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # BatchEncoding in v5
            text = TURNS.render(messages, add_generation_prompt=gen)
            assert tok.decode(ids) == text
            assert model.tokenizer.token_to_id("<|user|>") in ids  # a special token, one id
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    eos = hf.generation_config.eos_token_id  # the turns template ends a reply at <|end|>
    assert model.tokenizer.token_to_id("<|end|>") in (eos if isinstance(eos, list) else [eos])
    x = torch.randint(0, model.config.vocab_size, (1, 32))
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max() < 1e-4
