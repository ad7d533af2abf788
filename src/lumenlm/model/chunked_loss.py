"""Chunked linear + cross-entropy: the vocabulary projection and the loss, one chunk of
rows at a time, so the full (N, V) logits never exist.

Why: in the small presets the vocabulary projection and the cross-entropy are most of a
training step, and the plain path writes and re-reads the full fp32 logits several times
(the logits, their log-softmax, the gradient of each). Here each chunk of rows computes
`logits = h @ W^T (+ b)` in the compute dtype (the autocast dtype when autocast is on, as
`nn.Linear` would), the log-sum-exp and the loss in fp32, and, when a gradient is needed,
the gradient of the chunk's logits right away (`softmax - onehot`, scaled by 1 / the
trained-target count): `grad_h` for the chunk and the chunk's share of `grad_W` (and
`grad_b`) are taken from it while it is still in cache. Backward then only scales those
by the incoming scalar gradient. That is the same number of matmuls as the plain path
(three), with one chunk of logits in memory instead of about four full copies; the
design of Liger's fused linear cross-entropy, written for the CPU.

Semantics equal `F.cross_entropy(logits.float(), targets, ignore_index=...)` with mean
reduction over the trained targets (parity is tested in tests/test_model_loss_chunked.py),
with one exception: when no target is trained the loss is 0 with zero gradients, where
F.cross_entropy gives nan (0 / 0). Double backward is not supported.

Evaluation (`linear_token_scores`) runs the same projection chunk by chunk without a
gradient and keeps two numbers per token instead of a row of logits: the NLL (fp32
log-sum-exp minus the target's logit) and the target's rank, the number of logits
strictly greater than the target's. Top-k accuracy is rank < k: one comparison pass over
the chunk, no sort and no top-k. Tie rule: logits equal to the target's do not count
against it (a target tied for k-th place is a top-k hit). Without ties this is exactly
membership in `torch.topk(logits, k)`; with ties torch.topk picks among the tied ids by
its own order, so the rank rule is the deterministic one (tests/test_eval_chunked.py).

The element-wise part (log-sum-exp, NLL, gradient, rank) runs in `lumenlm.ce_rows`'s C
kernel, one row at a time while it sits in cache, for fp32 CPU logits where it is
available, and in torch's ops elsewhere (or with `LUMENLM_CE_ROWS=0`). The two agree to
float rounding, not bit for bit: the NLL within 1e-5, the gradient within 1e-6, the rank
exactly (tests/test_ce_rows.py; the tests of this module run with the kernel on and off).
`benchmarks/bench_ce_rows.py` on a 2-core Zen 4 EPYC (avx512_bf16), interleaved: the
head's forward + backward 1.07-1.08x, evaluation's head 1.12-1.13x, librarian-1.3m's
training step 1.05x and `evaluate_tokens` 1.11x; lumiere-1m's whole step and evaluation
(the head a smaller share) 1.00-1.02x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lumenlm import ce_rows

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Logit elements per chunk (4M floats, 16 MB in fp32): measured fastest on CPU among
2^19..2^23 for the librarian head (benchmarks/bench_loss_chunked.py --sweep); smaller
chunks make the matmuls too thin to run at full speed."""

SCORE_CHUNK_ELEMENTS = 1 << 24
"""Logit elements per chunk in evaluation (`linear_token_scores`: 16M floats, 64 MB, plus
one `SCORE_BLOCK_ELEMENTS` block of log-softmax at a time). With the scoring done block
by block, a wider product is all that a larger chunk changes, and MKL runs wide ones
faster. `benchmarks/bench_score_blocks.py --chunks` (`evaluate_tokens` at the benchmark
suite's batch) on a 2-core AVX2 EPYC (Zen 3), interleaved, against 2^22: librarian-1.3m
1.08x with 2^23 or 2^24, 1.04x with 2^25 (the whole batch); lumiere-1m 1.04-1.06x. A
vocabulary of 64k or more gets `MIN_CHUNK_ROWS` rows either way."""

SCORE_BLOCK_ELEMENTS = 1 << 19
"""Logit elements per block that `linear_token_scores` scores at a time within a chunk
(512K floats, 2 MB: 65 rows at a vocabulary of 8000; CPU only). The chunk's product
runs whole (wide matmuls are fast); its log-softmax, comparison and row sum then run
block by block while the block is still in the core's cache, instead of streaming the
whole chunk through memory three times. The numbers are the same at any block size (each row is
scored alone). `benchmarks/bench_score_blocks.py` on a 2-core AVX2 EPYC (Zen 3),
interleaved, the suite's rows in chunks of `SCORE_CHUNK_ELEMENTS`: scoring ran 1.10x
faster for librarian-1.3m (4096 rows x 8000), 1.06x for lumiere-1m (2048 x 4096) and
1.02x for lumenbase-128m (256 x 32000) than without blocks; 2^18 and 2^20 gained
less."""

MIN_CHUNK_ROWS = 256
"""Fewer rows than this per chunk and the matmuls lose more than the cache gains."""


def chunk_rows_for(
    vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, min_rows: int = MIN_CHUNK_ROWS
) -> int:
    """Rows per chunk: about `chunk_elements` logits, but at least `min_rows` rows."""
    return max(1, min_rows, chunk_elements // max(1, vocab_size))


def _compute_dtype(
    h: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """h, weight and bias in the dtype `nn.Linear` would compute in: the autocast dtype
    when autocast is on, else the weight's."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        return h.to(dt), weight.to(dt), bias.to(dt) if bias is not None else None
    return (h.to(weight.dtype) if weight.dtype != h.dtype else h), weight, bias


def _chunks(n: int, rows: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """(rows, V) logits in the inputs' dtype, upcast to fp32 (a no-op when already fp32)."""
    logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
    return logits.float()


def _chunk_nll_sum(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """The sum of the chunk's trained-target NLL."""
    safe = torch.where(valid, targets, 0)
    if ce_rows.usable(logits, safe):
        return torch.where(valid, ce_rows.scores(logits, safe)[0], 0.0).sum()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, safe[:, None]).squeeze(1)
    return torch.where(valid, lse - picked, 0.0).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and all gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ignore_index: int,
        chunk_rows: int,
    ) -> Tensor:
        n = h.shape[0]
        valid = targets != ignore_index
        inv = 1.0 / valid.sum().clamp(min=1).to(torch.float32)  # stays on the device: no sync
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_b = (
            torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device)
            if need_b and bias is not None
            else None
        )
        low = h.dtype != torch.float32
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for s, e in _chunks(n, chunk_rows):
            hc, tc, vc = h[s:e], targets[s:e], valid[s:e]
            logits = _chunk_logits(hc, weight, bias)
            # d loss / d logits = (softmax - onehot(target)) * valid / count
            scale = vc.to(torch.float32) * inv
            if ce_rows.usable(logits, tc):
                # one C pass per row: the NLL, and the logits become the scaled gradient
                loss_sum += ce_rows.grad_(logits, tc, scale).sum()
                g, sc = logits, None
            else:
                # log-softmax in one fused kernel; the NLL is read off it. The per-row
                # factor is applied to the (rows, D) operands, not to the (rows, V) gradient.
                safe = torch.where(vc, tc, 0)[:, None]
                logp = torch.log_softmax(logits, dim=-1)
                loss_sum -= torch.where(vc, logp.gather(1, safe).squeeze(1), 0.0).sum()
                g = logp.exp_()
                g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
                sc = scale.to(h.dtype)[:, None]
            if grad_b is not None:
                grad_b += g.sum(0) if sc is None else scale @ g
            gc = g.to(h.dtype) if low else g
            hs = hc if sc is None else hc * sc
            if grad_h is not None:
                torch.mm(gc, weight, out=grad_h[s:e])
                if sc is not None:
                    grad_h[s:e].mul_(sc)
            if grad_w is not None:
                if low:
                    grad_w += (gc.t() @ hs).float()
                else:
                    grad_w.addmm_(gc.t(), hs)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)  # type: ignore[attr-defined]
        return loss_sum * inv

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors  # type: ignore[attr-defined]
        dt_w, dt_b = ctx.dtypes  # type: ignore[attr-defined]
        go = grad_out.float()
        out_h = (grad_h * go.to(grad_h.dtype)) if grad_h is not None else None
        out_w = (grad_w * go).to(dt_w) if grad_w is not None else None
        out_b = (grad_b * go).to(dt_b) if grad_b is not None else None
        return out_h, out_w, out_b, None, None, None


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> Tensor:
    """Mean cross-entropy of `h @ weight.T + bias` against `targets` over the targets
    that are not `ignore_index`, without materialising the full logits.

    h: (..., D) hidden states; weight: (V, D) (a tied embedding works: its gradient
    flows to the shared parameter); targets: (...) ids. Under autocast the matmuls run
    in the autocast dtype and the log-sum-exp in fp32, as `nn.Linear` + `.float()` do.
    """
    d = h.shape[-1]
    h2 = h.reshape(-1, d)
    t = targets.reshape(-1)
    if t.shape[0] != h2.shape[0]:
        raise ValueError(f"{h2.shape[0]} hidden rows but {t.shape[0]} targets")
    dev = h.device.type
    h2, weight, bias = _compute_dtype(h2, weight, bias)
    rows = chunk_rows or chunk_rows_for(weight.shape[0])
    with torch.autocast(dev, enabled=False):
        if torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (h2, weight, bias)
        ):
            return _LinearCrossEntropy.apply(h2, weight, bias, t, ignore_index, rows)
        # No gradient needed (evaluation): the loss only, one chunk at a time.
        valid = t != ignore_index
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s, e in _chunks(h2.shape[0], rows):
            total += _chunk_nll_sum(_chunk_logits(h2[s:e], weight, bias), t[s:e], valid[s:e])
        return total / valid.sum().clamp(min=1).to(torch.float32)


def token_scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row NLL (fp32) and target rank (int64) of (rows, V) `logits` against (rows,)
    `targets`; see the module docstring for the rank and its tie rule. A non-finite
    logit makes the row's NLL non-finite (nan or inf), never a plausible number.

    fp32 CPU logits go through `lumenlm.ce_rows.scores` (each row in one sitting).
    Elsewhere, three passes over the chunk, in the fastest torch form measured on CPU: the
    fused log-softmax (the NLL is read off it, exactly as F.cross_entropy computes it),
    the comparison written as 0/1 into that same buffer, and a float row sum (exact for
    V < 2^24). A bool tensor summed to int64 was 4x slower than all of this.
    """
    logits = logits.float()
    if ce_rows.usable(logits, targets):
        return ce_rows.scores(logits, targets)
    idx = targets[:, None]
    buf = torch.log_softmax(logits, dim=-1)
    nll = buf.gather(1, idx).squeeze(1).neg_()
    torch.gt(logits, logits.gather(1, idx), out=buf)
    return nll, buf.sum(dim=-1).long()


@torch.no_grad()
def linear_token_scores(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`token_scores` of `h @ weight.T + bias` one chunk of rows at a time: at most one
    chunk of logits (about `SCORE_CHUNK_ELEMENTS` floats, 256 rows or more) exists.

    h: (N, D) hidden states (the head's input); weight: (V, D); targets: (N,). Returns
    the NLL (N,) in fp32 and the rank (N,) in int64. Besides the chunk's logits only one
    block's log-softmax buffer (`SCORE_BLOCK_ELEMENTS`, reused for the rank) exists. The
    logits are computed in the inputs' dtype (the autocast dtype under autocast), as `nn.Linear`
    does, then scored in fp32: the same numbers as `token_scores(lm_head(h), targets)`.
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(
            f"need (N, D) hidden states and (N,) targets, got {h.shape}, {targets.shape}"
        )
    dev = h.device.type
    h, weight, bias = _compute_dtype(h, weight, bias)
    n = h.shape[0]
    nll = torch.empty(n, dtype=torch.float32, device=h.device)
    rank = torch.empty(n, dtype=torch.int64, device=h.device)
    rows = chunk_rows or chunk_rows_for(weight.shape[0], SCORE_CHUNK_ELEMENTS)
    # blocks are a CPU cache tuning; on a GPU each would be a few more kernel launches
    block = max(1, SCORE_BLOCK_ELEMENTS // max(1, weight.shape[0])) if h.is_cpu else rows
    with torch.autocast(dev, enabled=False):
        for s, e in _chunks(n, rows):
            logits = _chunk_logits(h[s:e], weight, bias)
            for bs, be in _chunks(e - s, block):
                nll[s + bs : s + be], rank[s + bs : s + be] = token_scores(
                    logits[bs:be], targets[s + bs : s + be]
                )
    return nll, rank
