"""Model shapes shared by the benchmarks."""

from __future__ import annotations

# The LumenBase layout (GQA 8/4, SwiGLU, RMSNorm, RoPE) at a size a 2-core CPU runs a
# training step of in about half a second: 4 layers, d_model 256, vocab 8000.
SMALL_LLAMA: dict[str, int] = {
    "n_layers": 4,
    "d_model": 256,
    "n_heads": 8,
    "n_kv_heads": 4,
    "d_head": 32,
    "d_ff": 1024,
    "vocab_size": 8000,
}
