"""The fast decode step: one new token per row over a static KV cache, as a few plain ops.

Why: for models of 1-100M parameters, decoding is bound by the Python and dispatch cost
of each op, not by FLOPs. `GPT.forward` serves training, hooks, padding, packing and any
length, and pays for that on every token (module calls, hook checks, dropout modules,
position and mask building, 3-D reshapes, last-token slicing). `DecodeStep` computes the
same next-token logits as

    model(tokens[:, None], cache=cache, attention_mask=mask, position_ids=pos[:, None])

with none of that, so `engine.Decoder` (generate, chat) and the server's `BatchEngine`
share it:

- functional ops on 2-D (rows, features) activations, no module calls, no hooks;
- the weights in decode layout, prepared once per model and kept until a parameter
  changes (`decode_weights`): q/k/v from one matmul over their concatenation, SwiGLU's
  gate and up from one, and every matrix stored transposed and contiguous, (in, out).
  MKL's one-row product with a row-major (out, in) weight (what `F.linear` calls) ran
  1.5-6x slower than with the (in, out) copy on the AVX2 EPYC measured here. The copies
  cost memory, so models whose weights exceed `COPY_LIMIT_BYTES` keep the model's own
  tensors (transposed views, separate projections);
- RoPE cos/sin looked up in a table built once for every position;
- exact GELU through ATen's own kernel rather than oneDNN's (`_gelu`);
- grouped-query attention without copying K/V: the n_rep query heads that share a KV
  head are that head's n_rep "queries", so one SDPA call over (rows, n_kv_heads, n_rep)
  reads each cached key once, on every backend;
- keys/values written into the cache at a column given as a tensor (`index_copy_`) and
  attention under a key mask over the preallocated buffer: with `keys=None` every shape
  is fixed, so `torch.compile` builds the step once (CPU inductor; CUDA graphs with
  mode="reduce-overhead"); eager callers may pass `keys` to read only the columns
  written so far (worth it for long buffers). Masked columns get exactly zero weight.

- the products of a model too large for the CPU's caches go through whichever of
  torch's MKL, numpy's OpenBLAS and lumenlm's packed kernel a one-off probe on the
  model's own weights finds fastest (`lumenlm.blas`). With the packed kernel
  (`lumenlm.packed`) the weights are kept packed in 16-column panels instead of as
  (in, out) copies (the same memory); with numpy's, torch's own ops run on one thread
  meanwhile so that the two thread pools do not fight over the cores.

- fp32 CPU models of at most `small_step.SMALL_BYTES` take the whole step in one C call
  instead (`lumenlm.small_step`: the same operations over the same (in, out) copies),
  since there per-op dispatch is nearly all of a step's time.

The numbers are the plain path's operations in the same dtype and order; only the BLAS
kernels chosen for the fused and transposed products differ, so logits agree to
rounding (tests/test_infer_fast_decode.py: within 1e-5 relative in fp32, and the greedy
tokens are identical).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_hooks
from torch import Tensor

from lumenlm import blas, packed, small_step
from lumenlm.model.gpt import GPT
from lumenlm.model.hook_points import HookPoint
from lumenlm.model.norms import RMSNorm
from lumenlm.model.positions import rope_cos_sin

COPY_LIMIT_BYTES = 1 << 30
"""Above this many bytes of weights, decode uses the model's own tensors (no copies)."""

Linear = tuple[Tensor | packed.PackedMatrix, Tensor | None]
"""A weight in (in, out) layout (or packed so, `lumenlm.packed`) and its bias: y = x @ w + b."""
Norm = tuple[str, Tensor | None, Tensor | None, float]
"""("layernorm" | "rmsnorm" | "identity", weight, bias, eps)."""


@dataclass
class LayerWeights:
    """One block in decode layout."""

    attn_norm: Norm
    qkv: list[Linear]  # one fused (q|k|v) projection, or q, k, v apart
    o: Linear
    mlp_norm: Norm
    up: list[Linear]  # SwiGLU: one fused (gate|up), or gate, up apart; GELU: [up]
    down: Linear


@dataclass
class DecodeWeights:
    """A model's weights in decode layout (see the module docstring)."""

    emb: Tensor
    pos: Tensor | None  # learned position table
    rope: tuple[Tensor, Tensor] | None  # cos, sin: (context_length, d_head)
    layers: list[LayerWeights]
    final_norm: Norm
    head: Linear
    nbytes: int  # the model's parameter bytes
    key: tuple  # the parameters these were made from: (data_ptr, version) of each
    packed: bool = False  # the matrices are `packed.PackedMatrix` (for `packed.packed_mm`)
    small: small_step.SmallStep | None = None  # the C step over these weights, once made


def _norm(module: torch.nn.Module) -> Norm:
    if isinstance(module, RMSNorm):
        return ("rmsnorm", module.weight.detach(), None, module.eps)
    if isinstance(module, torch.nn.LayerNorm):
        w = module.weight.detach() if module.weight is not None else None
        b = module.bias.detach() if module.bias is not None else None
        return ("layernorm", w, b, float(module.eps))
    return ("identity", None, None, 0.0)


def _fused(mods: list[torch.nn.Linear]) -> Tensor:
    """The (in, out) contiguous copy of `mods`' weights side by side."""
    return torch.cat([m.weight.detach() for m in mods]).t().contiguous()


def _linears(mods: list[torch.nn.Linear], copy: bool, pack: bool = False) -> list[Linear]:
    """The (in, out) weights of `mods`: one fused contiguous copy (packed with `pack`),
    or views of each."""
    ws = [m.weight.detach() for m in mods]
    bs = [m.bias.detach() if m.bias is not None else None for m in mods]
    if not copy:
        return [(w.t(), b) for w, b in zip(ws, bs)]
    bias = None
    if any(b is not None for b in bs):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(ws, bs)])
    return [(packed.pack(_fused(mods)) if pack else _fused(mods), bias)]


def _groups(model: GPT) -> Iterator[list[torch.nn.Linear]]:
    """The linears a step multiplies by, grouped as fused, in the order it reads them."""
    for block in model.blocks:
        a, m = block.attn, block.mlp
        yield [a.q_proj, a.k_proj, a.v_proj]
        yield [a.o_proj]
        yield [m.gate_proj, m.up_proj] if m.swiglu else [m.up_proj]
        yield [m.down_proj]
    yield [model.lm_head]


def probe_matrices(model: GPT) -> Iterator[Tensor]:
    """The (in, out) matrices a step multiplies by, made one at a time, in its order:
    what `blas.decode_choice` times (it takes only the first few)."""
    with torch.no_grad():
        for mods in _groups(model):
            yield _fused(mods)


def _param_key(model: GPT) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def decode_weights(model: GPT, pack: bool = False) -> DecodeWeights:
    """`model`'s weights in decode layout (packed for `packed.packed_mm` with `pack`;
    only where the step copies its weights, see `COPY_LIMIT_BYTES`), cached on the model
    and rebuilt when any parameter was replaced or changed in place (a training step,
    `load_state_dict`, `.to()`) or the other layout is asked for."""
    key = _param_key(model)
    size = blas.parameter_bytes(model)
    copy = size <= COPY_LIMIT_BYTES
    pack = pack and copy
    cached: DecodeWeights | None = model.__dict__.get("_decode_weights")
    if cached is not None and cached.key == key and cached.packed == pack:
        return cached
    model.__dict__.pop("_decode_weights", None)  # free the stale copies first
    del cached
    cfg = model.config
    with torch.no_grad():
        groups = list(_groups(model))  # per block: q|k|v, o, the MLP's up, down; the head
        layers = []
        for i, block in enumerate(model.blocks):
            qkv, o, ups, down = groups[4 * i : 4 * i + 4]
            layers.append(
                LayerWeights(
                    attn_norm=_norm(block.attn_norm),
                    qkv=_linears(qkv, copy, pack),
                    o=_linears(o, copy, pack)[0],
                    mlp_norm=_norm(block.mlp_norm),
                    up=_linears(ups, copy, pack),
                    down=_linears(down, copy, pack)[0],
                )
            )
        rope = None
        if cfg.positions == "rope":
            w = model.tok_emb.weight
            pos = torch.arange(cfg.context_length, device=w.device)[None]
            cos, sin = rope_cos_sin(pos, cfg.d_head, cfg.rope_theta, w.dtype)  # type: ignore[arg-type]
            rope = (cos[0, 0], sin[0, 0])
        weights = DecodeWeights(
            emb=model.tok_emb.weight.detach(),
            pos=model.pos_emb.weight.detach() if model.pos_emb is not None else None,
            rope=rope,
            layers=layers,
            final_norm=_norm(model.final_norm),
            head=_linears(groups[-1], copy, pack)[0],
            nbytes=size,
            key=key,
            packed=pack,
        )
    model.__dict__["_decode_weights"] = weights
    return weights


def _apply_norm(n: Norm, x: Tensor) -> Tensor:
    kind, w, b, eps = n
    if kind == "layernorm":
        return torch.layer_norm(x, (x.shape[-1],), w, b, eps)
    if kind == "rmsnorm":  # RMSNorm.forward's operations, in its order, bit for bit
        x32 = x if x.dtype == torch.float32 else x.float()  # (two no-op calls fewer)
        # x * x is pow(2) exactly; the in-place add and rsqrt on the fresh mean save two
        # allocations
        x32 = x32 * (x32 * x32).mean(-1, keepdim=True).add_(eps).rsqrt_()
        return w * (x32 if x32.dtype == x.dtype else x32.to(x.dtype))  # type: ignore[operator]
    return x


MatMul = blas.MatMul
"""A 2-D product: `torch.mm`, `blas.numpy_mm` or `packed.packed_mm` (`lumenlm.blas`)."""


def _project(x: Tensor, lin: Linear, mm: MatMul, add: Tensor | None = None) -> Tensor:
    """x @ w + b (+ add): with torch's BLAS one addmm (b or add as its input) and at most
    one in-place add; with numpy's or the packed kernel the product, then in-place adds."""
    w, b = lin
    if mm is torch.mm:
        if add is not None:
            return torch.addmm(add, x, w) if b is None else torch.addmm(b, x, w).add_(add)
        return torch.addmm(b, x, w) if b is not None else torch.mm(x, w)
    y = mm(x, w)
    if b is not None:
        y += b
    if add is not None:
        y += add
    return y


def _projections(x: Tensor, lins: list[Linear], sizes: list[int], mm: MatMul) -> list[Tensor]:
    if len(lins) == 1:
        return list(_project(x, lins[0], mm).split_with_sizes(sizes, dim=-1))
    return [_project(x, lin, mm) for lin in lins]


def _gelu(x: Tensor, approximate: str) -> Tensor:
    """GELU of (rows, features) `x`. Exact GELU on a contiguous fp32 CPU tensor goes to
    oneDNN (`use_mkldnn` in ATen's Activation.cpp), whose per-call cost at one-token
    sizes is most of a librarian-1.3m MLP; on a non-contiguous view of the same memory
    ATen runs its own vectorized kernel. So the (rows, F) input is read as the
    transposed (rows, F/2, 2) view and the result viewed back, copy-free: 1.13-1.16x
    the whole greedy decode of librarian-1.3m on a 2-core AVX2 EPYC (Zen 3),
    interleaved; the values differ from oneDNN's by at most 1-2 ulp."""
    B, F2 = x.shape
    if approximate != "none" or F2 % 2 or not x.is_cpu:
        return torch._C._nn.gelu(x, approximate=approximate)
    return torch._C._nn.gelu(x.view(B, 2, F2 // 2).transpose(1, 2)).transpose(1, 2).reshape(B, F2)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`positions.apply_rope` on (rows, kv heads, n, d_head), cos/sin (rows, 1, 1, d_head)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class DecodeStep:
    """Next-token logits for one new token per row, written into a KV cache.

    `step(tokens, positions, column, key_mask, k, v, keys=None)`:
    tokens and positions (rows,) int64; `column` a (1,) int64 tensor, the cache column
    the new keys go to; `key_mask` (rows, S), or its (rows, 1, 1, S) view kept by the
    caller (one op fewer per token): where a row may attend (its own new column
    included), as SDPA takes it: bool (True = attend) or additive (0 or -inf, in the
    model's dtype; the cheaper kind on CPU); `k`/`v` the cache buffers (n_layers, rows, n_kv_heads, S,
    d_head/d_value); `keys`: attend to columns [0, keys) only (eager), or None for
    the whole buffer (fixed shapes, for torch.compile). Returns (rows, vocab) logits in
    the model's dtype. The caller advances its cache length and keeps positions below
    the context length (`Decoder` and `SlotCache` slide before that). Callers ask
    `usable()` first and take `GPT.forward` on the same cache when it says no, and call
    `refresh()` where the weights may have changed since the last step.

    `compile=True` wraps the step in `torch.compile` (fullgraph; on CUDA
    mode="reduce-overhead", i.e. CUDA graphs); the compiled step is kept on the model,
    so later generations reuse it. Pass `keys=None` with it.
    """

    def __init__(self, model: GPT, compile: bool = False) -> None:
        cfg = model.config
        assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
        self.model = model
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.d_head, self.d_value = cfg.d_head, cfg.d_value
        self.pre_norm = cfg.pre_norm
        self.gelu = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.swiglu = cfg.activation == "swiglu"
        self.qkv_sizes = [
            self.n_heads * self.d_head,
            self.n_kv * self.d_head,
            self.n_kv * self.d_value,
        ]
        # every module whose own forward hooks would run in GPT.forward (HookPoints run
        # only through the model's hook switch, which `usable` reads)
        self._modules = [m for m in model.modules() if not isinstance(m, HookPoint)]
        self.compile = compile
        self._fn: Callable[..., Tensor] = self._step
        self._mm: MatMul = torch.mm
        self.blas = "torch's"
        """Which BLAS the step multiplies through, and why (`blas.decode_choice`)."""
        self._split_threads = False
        self.refresh()
        if compile:
            self._fn = compiled_step(model, self)

    def usable(self) -> bool:
        """Whether this step may stand in for `GPT.forward` now: the model is in eval
        mode and no hook would see its activations (no hook on a hook point, none
        registered globally, and, as of the last `refresh`, no forward hook on any
        module: walking every module costs too much to repeat per token)."""
        m = self.model
        if m.training or m._hook_switch.count > 0 or self._module_hooks:
            return False
        return not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)

    def refresh(self) -> DecodeWeights:
        """Re-read the model's weights (`decode_weights`: rebuilt only if a parameter
        changed) and look for module forward hooks. That walks every parameter and
        module, so the loops call it once per prefill (`Decoder`) or per engine
        iteration with new work (`BatchEngine`), not per token."""
        # the eager step multiplies through numpy's BLAS or the packed kernel where that
        # is faster on this CPU (for its device and dtype; the probe runs once per
        # process); a compiled one keeps torch's ops for inductor
        m = self.model
        self._small = None
        if self.compile:
            self._mm, self.blas = torch.mm, "torch's (compiled step)"
        elif _small_ok(m):
            self._mm, self.blas = torch.mm, SMALL_NOTE
            self.weights = decode_weights(m)
            self._small = self.weights.small = self.weights.small or _small_step(m, self.weights)
        else:
            nbytes = blas.parameter_bytes(m)
            self._mm, self.blas = blas.decode_choice(
                probe_matrices(m),
                nbytes,
                packed_ok=nbytes <= COPY_LIMIT_BYTES,
                sample=m.lm_head.weight,
            )
        self._split_threads = self._mm is blas.numpy_mm
        if self._small is None:
            self.weights = decode_weights(m, pack=self._mm is packed.packed_mm)
        self._module_hooks = any(x._forward_hooks or x._forward_pre_hooks for x in self._modules)
        return self.weights

    def __call__(
        self,
        tokens: Tensor,
        positions: Tensor,
        column: Tensor,
        key_mask: Tensor,
        k: Tensor,
        v: Tensor,
        keys: int | None = None,
    ) -> Tensor:
        if self._small is not None:
            return self._small(tokens, positions, column, key_mask, k, v, keys)
        w = self.weights
        if self.compile:
            return self._fn(w, tokens, positions, column, key_mask, k, v)
        if not self._split_threads:
            return self._step(w, tokens, positions, column, key_mask, k, v, keys)
        with blas.numpy_threads():
            return self._step(w, tokens, positions, column, key_mask, k, v, keys)

    def _step(
        self,
        w: DecodeWeights,
        tokens: Tensor,
        positions: Tensor,
        column: Tensor,
        key_mask: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        keys: int | None = None,
    ) -> Tensor:
        B, mm = tokens.shape[0], self._mm
        H, G, Dh, Dv = self.n_heads, self.n_kv, self.d_head, self.d_value
        # torch.embedding / torch.layer_norm / torch._C._nn.silu: the ops without
        # torch.nn.functional's Python checks, which cost more than the op at this size
        x = torch.embedding(w.emb, tokens)
        if w.pos is not None:
            x = x + torch.embedding(w.pos, positions)
        cos = sin = None
        if w.rope is not None:
            cos = torch.embedding(w.rope[0], positions)[:, None, None]  # (B, 1, 1, Dh)
            sin = torch.embedding(w.rope[1], positions)[:, None, None]
        if key_mask.dim() == 2:  # (B, S) -> (B, 1, 1, S): every query of every head
            key_mask = key_mask[:, None, None]
        mask = key_mask if keys is None else key_mask[..., :keys]
        for i, lw in enumerate(w.layers):
            h = _apply_norm(lw.attn_norm, x) if self.pre_norm else x
            q, k, v = _projections(h, lw.qkv, self.qkv_sizes, mm)
            # the H / G query heads reading KV head g are its H / G queries: (B, G, H/G, Dh)
            q, k, v = q.view(B, G, H // G, Dh), k.view(B, G, 1, Dh), v.view(B, G, 1, Dv)
            if cos is not None:
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)  # type: ignore[arg-type]
            kc, vc = k_cache[i], v_cache[i]
            kc.index_copy_(2, column, k)
            vc.index_copy_(2, column, v)
            if keys is not None:
                kc, vc = kc[:, :, :keys], vc[:, :, :keys]
            y = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)
            a = _project(y.reshape(B, H * Dv), lw.o, mm)
            if self.pre_norm:
                x = x + a
                h = _apply_norm(lw.mlp_norm, x)
            else:
                x = h = _apply_norm(lw.attn_norm, x + a)
            if self.swiglu:
                gate, up = _projections(h, lw.up, [lw.down[0].shape[0]] * 2, mm)
                m = torch._C._nn.silu(gate) * up
            else:
                m = _gelu(_project(h, lw.up[0], mm), self.gelu)
            if self.pre_norm:  # the residual add inside the product where there is no bias
                x = _project(m, lw.down, mm, add=x)
            else:
                x = _apply_norm(lw.mlp_norm, x + _project(m, lw.down, mm))
        return _project(_apply_norm(w.final_norm, x), w.head, mm)


SMALL_NOTE = "lumenlm's small-model step (lumenlm.small_step: one C call per token)"


def _small_ok(model: GPT) -> bool:
    """Whether `model` decodes through `small_step`: an fp32 CPU model of at most
    `small_step.SMALL_BYTES` (and of the fused copies the C step reads,
    `COPY_LIMIT_BYTES`), the C step available, and no product forced by `LUMENLM_BLAS`
    (a forced product is there to be measured)."""
    w = model.tok_emb.weight
    nbytes = blas.parameter_bytes(model)
    return (
        w.device.type == "cpu"
        and w.dtype == torch.float32
        and nbytes <= min(small_step.SMALL_BYTES, COPY_LIMIT_BYTES)
        and blas.requested() == "auto"
        and small_step.unavailable() is None
    )


def _small_step(model: GPT, w: DecodeWeights) -> small_step.SmallStep:
    """The C step over `w`, the model's (copied, unpacked) decode weights."""
    cfg = model.config
    dims = {
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "n_kv": cfg.n_kv_heads, "d_head": cfg.d_head, "d_value": cfg.d_value,
        "d_ff": w.layers[0].down[0].shape[0] if w.layers else cfg.d_ff,
        "vocab": cfg.vocab_size,
    }  # fmt: skip
    layers = [(lw.attn_norm, lw.qkv[0], lw.o, lw.mlp_norm, lw.up[0], lw.down) for lw in w.layers]
    return small_step.SmallStep(
        dims, cfg.activation, cfg.pre_norm, w.emb, w.pos, w.rope, layers, w.final_norm, w.head
    )  # type: ignore[arg-type]


def compiled_step(model: GPT, step: DecodeStep) -> Callable[..., Tensor]:
    """`step._step` under torch.compile, made once per model and kept on it."""
    fn = model.__dict__.get("_compiled_decode_step")
    if fn is None:
        on_cuda = model.tok_emb.weight.is_cuda
        fn = torch.compile(
            step._step,
            fullgraph=True,
            dynamic=False,
            mode="reduce-overhead" if on_cuda else None,
        )
        model.__dict__["_compiled_decode_step"] = fn
    return fn
