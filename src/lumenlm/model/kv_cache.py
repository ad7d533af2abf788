"""Preallocated key/value buffers for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor

from lumenlm.config import ModelConfig


class KVCache:
    """Preallocated key/value buffers for all layers: no re-allocation per token.

    `length` is the number of positions already stored (shared by the batch).
    The model writes new keys/values at `[length, length + T)` and advances
    `length` after the last layer. Keys and values are stored per KV head (GQA:
    n_kv_heads, not n_heads), after RoPE and after any hook on `hook_k`/`hook_v`
    (`hook_rot_k`), so a patched key stays patched for later tokens.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
        shape_k = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_length, cfg.d_head)
        shape_v = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_length, cfg.d_value)
        self.k = torch.zeros(shape_k, device=device, dtype=dtype)
        self.v = torch.zeros(shape_v, device=device, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values for `layer`; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Keep only batch rows `index` (e.g. drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]
