"""The model: one decoder-only Transformer (`GPT`) for every preset, with hook points.

Modules: `gpt` (the model and its forward), `blocks` (attention, MLP, block),
`norms`, `positions` (RoPE, packed-row positions), `kv_cache`, `decode_step` (the fast
one-token step over a static KV cache that generate, chat and serve decode with),
`chunked_loss` (the vocabulary projection and cross-entropy one chunk of rows at a
time), `hook_points` (the identity modules and the run_with_hooks / run_with_cache
API) and `activation_cache` (what run_with_cache returns). Everything a caller needs
is importable from here.
"""

from lumenlm.model.activation_cache import ActivationCache, act_name
from lumenlm.model.blocks import MLP, Attention, Block
from lumenlm.model.chunked_loss import linear_cross_entropy
from lumenlm.model.gpt import GPT, ModelOutput
from lumenlm.model.hook_points import HookFn, HookPoint, NameFilter
from lumenlm.model.hooked_model import HookedModel
from lumenlm.model.kv_cache import KVCache
from lumenlm.model.norms import LayerNorm, RMSNorm, make_norm
from lumenlm.model.positions import apply_rope, document_positions, rope_cos_sin

__all__ = [
    "GPT",
    "MLP",
    "ActivationCache",
    "Attention",
    "Block",
    "HookFn",
    "HookPoint",
    "HookedModel",
    "KVCache",
    "LayerNorm",
    "ModelOutput",
    "NameFilter",
    "RMSNorm",
    "act_name",
    "apply_rope",
    "document_positions",
    "linear_cross_entropy",
    "make_norm",
    "rope_cos_sin",
]
