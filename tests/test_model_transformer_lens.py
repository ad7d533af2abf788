"""Agreement with TransformerLens itself: lumenlm's Hugging Face export booted as a
`TransformerBridge` (raw numerics: no LayerNorm folding, no centring) shows the same
activations under the same names and shapes as lumenlm's own hook points, within 1e-4
in fp32, for GPT-2-style and Llama-style (GQA, RoPE) models on several texts.

Slow (the bridge boots a transformers model per case); needs the `interp` extra."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lumenlm.export import export_hf, stock_architecture
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from model_helpers import make_tokenizer

pytestmark = pytest.mark.slow

TEXTS = [
    "the cat sat on the mat.",
    "once upon a time there was a little girl who read a big red book in the library.",
    "hello",
    "a dog ran to the park, and the sun was happy; said the boy: hello friend!",
]
VOCAB = 300
# name -> (preset, overrides): stock transformers families, more than one shape each.
CASES = {
    "gpt2": ("tiny-gpt2", {}),
    "gpt2-3layer": (
        "tiny-gpt2",
        {"n_layers": 3, "n_heads": 2, "n_kv_heads": 2, "d_head": 32, "d_value": 32},
    ),
    "llama-gqa": ("tiny", {"n_kv_heads": 2}),
    "librarian": ("librarian-1.3m", {}),
    "llama-mqa-3layer": ("tiny", {"n_kv_heads": 1, "n_layers": 3, "rope_theta": 500.0}),
}
# The bridge names activations its own way too (hook_in/hook_out of every wrapper,
# rotary cos/sin); lumenlm has none of its hooks outside the shared set.


def _perturbed(cfg) -> GPT:
    """A random model whose norm weights and biases are not 1 and 0, so folding or a
    skipped weight would show."""
    model = GPT(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", VOCAB)


@pytest.mark.parametrize("case", list(CASES))
def test_every_shared_hook_agrees_with_the_bridge(case: str, tokenizer_path, tmp_path) -> None:
    tl_bridge = pytest.importorskip(
        "transformer_lens.model_bridge",
        reason="TransformerLens 4 is not installed: pip install 'lumenlm[interp]'",
    )
    from tokenizers import Tokenizer

    preset, overrides = CASES[case]
    torch.manual_seed(sum(map(ord, case)))
    cfg = dataclasses.replace(
        get_preset(preset).model.with_dropout(0.0), vocab_size=VOCAB, **overrides
    )
    ours = _perturbed(cfg)
    assert stock_architecture(cfg) in ("GPT2LMHeadModel", "LlamaForCausalLM")
    out = export_hf(ours, tmp_path / "hf", tokenizer_path)
    bridge = tl_bridge.TransformerBridge.boot_transformers(str(out), device="cpu")
    tok = Tokenizer.from_file(str(tokenizer_path))
    n_compared = 0
    for text in TEXTS:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            logits, cache = ours.run_with_cache(ids)
            tl_logits, tl_cache = bridge.run_with_cache(ids)
        torch.testing.assert_close(logits, tl_logits, rtol=0, atol=1e-4)
        missing = sorted(set(cache) - set(tl_cache.keys()))
        assert not missing, f"lumenlm hooks the bridge lacks: {missing}"
        for name, act in cache.items():
            theirs = tl_cache[name]
            assert tuple(act.shape) == tuple(theirs.shape), name
            if name.endswith("hook_attn_scores"):
                # Masked scores: -inf here, the dtype's minimum in transformers' eager path.
                keep = torch.isfinite(act)
                assert torch.all(theirs[~keep] < -1e30), name
                act, theirs = act[keep], theirs[keep]
            torch.testing.assert_close(act, theirs, rtol=0, atol=1e-4, msg=name)
            n_compared += 1
    n_hooks = len(ours.hook_dict)
    assert n_compared == len(TEXTS) * n_hooks and n_hooks >= 20 * cfg.n_layers // 2
