"""GGUF export checked by its peers: `gguf.GGUFReader` reads back every key and tensor,
and transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`) gives our logits:
to 1e-4 in f32, and within the stated tolerances for f16 and q8_0 (relative to the
largest logit: 2e-3 for f16, 2e-2 for q8_0, see docs/EXPORT.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export_helpers import TEXTS, arch_model_dir
from lumenlm.data.chat_template import TURNS
from lumenlm.data.tokenizer import encode
from lumenlm.errors import LumenError
from lumenlm.export.chat_jinja import to_jinja
from lumenlm.export.gguf import _permute, export_gguf
from lumenlm.modelio import load

gguf = pytest.importorskip("gguf", reason="pip install 'lumenlm[gguf]' for GGUF export")
transformers = pytest.importorskip("transformers")

TOLERANCE = {"f32": 1e-4, "f16": 2e-3, "q8_0": 2e-2}
"""max |their logit - ours| / max |our logit| (f32: absolute)."""


def _field(reader, key: str):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))] if len(f.data) < 5 else f.contents()
    return f.contents()


def _hf_from_gguf(path, cfg):
    """transformers' model for the file. For gpt2 its GGUF config mapping reads
    context_length into n_ctx (not n_positions, the position table) and ignores
    feed_forward_length (n_inner), so those two come from the file's own metadata."""
    kw = {}
    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    if cfg.positions == "rope" and ("blk.0.attn_q.bias" in names or "blk.0.ffn_up.bias" in names):
        # No GGUF key says "biases" (llama.cpp looks for the tensors); transformers' llama
        # config mapping then leaves attention_bias/mlp_bias off and drops the biases.
        kw["config"] = transformers.LlamaConfig(
            vocab_size=int(r.fields["llama.vocab_size"].contents()),
            hidden_size=int(r.fields["llama.embedding_length"].contents()),
            intermediate_size=int(r.fields["llama.feed_forward_length"].contents()),
            num_hidden_layers=int(r.fields["llama.block_count"].contents()),
            num_attention_heads=int(r.fields["llama.attention.head_count"].contents()),
            num_key_value_heads=int(r.fields["llama.attention.head_count_kv"].contents()),
            head_dim=int(r.fields["llama.rope.dimension_count"].contents()),
            max_position_embeddings=int(r.fields["llama.context_length"].contents()),
            rms_norm_eps=float(r.fields["llama.attention.layer_norm_rms_epsilon"].contents()),
            rope_theta=float(r.fields["llama.rope.freq_base"].contents()),
            attention_bias="blk.0.attn_q.bias" in names,
            mlp_bias="blk.0.ffn_up.bias" in names,
            tie_word_embeddings="output.weight" not in names,
        )
    if cfg.positions == "learned":
        kw["config"] = transformers.GPT2Config(
            vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
            n_positions=int(r.fields["gpt2.context_length"].contents()),
            n_ctx=int(r.fields["gpt2.context_length"].contents()),
            n_embd=int(r.fields["gpt2.embedding_length"].contents()),
            n_layer=int(r.fields["gpt2.block_count"].contents()),
            n_head=int(r.fields["gpt2.attention.head_count"].contents()),
            n_inner=int(r.fields["gpt2.feed_forward_length"].contents()),
            layer_norm_epsilon=float(r.fields["gpt2.attention.layer_norm_epsilon"].contents()),
            activation_function="gelu_new",  # llama.cpp's gpt2 graph: tanh GELU
        )
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **kw
    ).eval()


CASES = {
    "llama-gqa": ("llama", {}),
    "llama-mqa-untied-theta": (
        "llama",
        {"n_kv_heads": 1, "tie_embeddings": False, "rope_theta": 5e5, "d_head": 32},
    ),
    "llama-biases": ("llama", {"attn_bias": True, "mlp_bias": True}),
    "gpt2-tanh": ("gpt2", {"activation": "gelu_tanh"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reader_and_transformers_agree(tmp_path, case: str) -> None:
    arch, changes = CASES[case]
    model = load(arch_model_dir(tmp_path, arch, **changes))
    cfg = model.config
    x = torch.tensor([encode(model.tokenizer, TEXTS[0] + " " + TEXTS[2])[:40]])
    with torch.no_grad():
        ours = model(x).logits
    for outtype in ("f32", "f16", "q8_0"):
        path = export_gguf(model, tmp_path / f"m-{outtype}.gguf", outtype)
        r = gguf.GGUFReader(path)
        a = "gpt2" if arch == "gpt2" else "llama"
        assert _field(r, "general.architecture") == a
        assert _field(r, f"{a}.context_length") == cfg.context_length
        assert _field(r, f"{a}.embedding_length") == cfg.d_model
        assert _field(r, f"{a}.feed_forward_length") == cfg.d_ff
        assert _field(r, f"{a}.block_count") == cfg.n_layers
        assert _field(r, f"{a}.attention.head_count") == cfg.n_heads
        if a == "llama":
            assert _field(r, "llama.attention.head_count_kv") == cfg.n_kv_heads
            assert _field(r, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
            assert _field(r, "llama.rope.dimension_count") == cfg.d_head
            eps = _field(r, "llama.attention.layer_norm_rms_epsilon")
        else:
            eps = _field(r, "gpt2.attention.layer_norm_epsilon")
        assert eps == pytest.approx(cfg.norm_eps)
        assert _field(r, "tokenizer.ggml.model") == "gpt2"
        assert _field(r, "tokenizer.ggml.pre") == "gpt-2"
        assert _field(r, "tokenizer.chat_template") == to_jinja(TURNS)
        tokens = r.fields["tokenizer.ggml.tokens"]
        assert len(tokens.data) == cfg.vocab_size
        vocab = model.tokenizer.get_vocab()
        assert all(tokens.contents(i) == t for t, i in list(vocab.items())[:50])
        types = r.fields["tokenizer.ggml.token_type"].contents()
        assert types[vocab["<|user|>"]] == gguf.TokenType.CONTROL
        assert types[vocab["Ġthe"] if "Ġthe" in vocab else 300] == gguf.TokenType.NORMAL
        assert len(r.fields["tokenizer.ggml.merges"].data) > 0
        assert _field(r, "tokenizer.ggml.eos_token_id") == vocab["<|endoftext|>"]
        assert _field(r, "tokenizer.ggml.eot_token_id") == vocab["<|end|>"]
        assert _field(r, "tokenizer.ggml.add_bos_token") is False
        assert _field(r, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[outtype]
        n_tensors = 2 + (0 if cfg.tie_embeddings else 1) + 9 * cfg.n_layers
        n_tensors += cfg.n_layers * (4 * cfg.attn_bias + 3 * cfg.mlp_bias)
        if a == "gpt2":
            n_tensors = 4 + 12 * cfg.n_layers
        assert len(r.tensors) == n_tensors
        if outtype == "f32":  # every tensor's values read back exactly
            sd = model.state_dict()
            emb = next(t for t in r.tensors if t.name == "token_embd.weight")
            assert np.array_equal(np.asarray(emb.data), sd["tok_emb.weight"].numpy())
            if a == "llama":
                q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
                want = _permute(sd["blocks.0.attn.q_proj.weight"], cfg.n_heads)
                assert np.array_equal(np.asarray(q.data), want.numpy())
            assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
        hf = _hf_from_gguf(path, cfg)
        with torch.no_grad():
            theirs = hf(x).logits
        err = (theirs - ours).abs().max().item()
        scale = 1.0 if outtype == "f32" else ours.abs().max().item()
        assert err / scale < TOLERANCE[outtype], (outtype, err)
        if outtype == "q8_0":
            assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in r.tensors)


def test_exact_gelu_runs_as_tanh_gelu_within_tolerance(tmp_path) -> None:
    model = load(arch_model_dir(tmp_path, "gpt2"))  # Librarian's exact GELU
    assert model.config.activation == "gelu"
    path = export_gguf(model, tmp_path / "m.gguf")
    x = torch.randint(0, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        err = (_hf_from_gguf(path, model.config)(x).logits - model(x).logits).abs().max()
    assert err / model(x).logits.abs().max() < TOLERANCE["f16"]


def test_lumiere_is_refused_naming_what_gguf_lacks(tmp_path) -> None:
    model = load(arch_model_dir(tmp_path, "lumiere"))
    with pytest.raises(LumenError, match="llama needs RoPE positions, its gpt2 needs LayerNorm"):
        export_gguf(model, tmp_path / "m.gguf")
    assert list(tmp_path.glob("*.gguf*")) == [] and not list(tmp_path.glob(".m.gguf*"))
