"""The C cross-entropy rows kernel (`lumenlm.ce_rows`) against torch's element-wise ops.

For each preset, with a seeded model at the benchmark suite's shapes
(`shapes.SUITE_SHAPES`: batch x context), four tasks, each timed with the kernel on and
off (`LUMENLM_CE_ROWS=0`: the same code path with torch's log-softmax, gather, exp and
scatter instead), the two alternating call by call after warm-up (interleaved, so a slow
spell of the shared host hits both):

- "head, train": `linear_cross_entropy` forward and backward over the final hidden
  states (the vocabulary product, the loss and its gradients, chunk by chunk);
- "head, eval": `linear_token_scores` (the product, NLL and target rank);
- "train step": the trainer's step end to end (`accumulate`, clip, fused AdamW), as
  `python -m benchmarks` times it;
- "eval": `lumenlm.evaluate.evaluate_tokens` over batch x context tokens.

Both sides must agree (loss within 1e-5 relative). Reports the median and lower-quartile
milliseconds of each side and off / on (> 1: the kernel is faster). Run under the MKL
shim, as the suite's workers and the CLI run:

    S=$(ls -t ~/.cache/lumenlm/libmkl_intel_path-*.so | head -1)
    LD_PRELOAD=$S LUMENLM_MKL_SHIM=$S .venv/bin/python benchmarks/bench_ce_rows.py \
        [--presets librarian-1.3m lumiere-1m] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from lumenlm import ce_rows
from lumenlm.allocator import tune_malloc
from lumenlm.evaluate import evaluate_tokens
from lumenlm.model import GPT
from lumenlm.model.chunked_loss import linear_cross_entropy, linear_token_scores
from lumenlm.presets import get_preset
from lumenlm.train.distributed import DistEnv
from lumenlm.train.loss import accumulate
from lumenlm.train.optim import build_optimizer
from shapes import suite_shape


def _tasks(name: str) -> dict[str, Callable[[], float]]:
    """The four tasks of one preset, each returning its loss."""
    preset = get_preset(name)
    cfg = preset.model.with_dropout(0.0)
    shape = suite_shape(name, cfg.context_length)
    torch.manual_seed(0)
    model = GPT(cfg)
    b, t, v = shape.batch, shape.context, cfg.vocab_size
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, v, (b, t), generator=g)
    y = torch.randint(0, v, (b, t), generator=g)
    tokens = torch.randint(0, v, (b * t + 1,), generator=g)
    with torch.no_grad():
        h = model(x, return_logits=False).final_hidden.flatten(0, 1).clone()
    w, bias = model.lm_head.weight.detach(), model.lm_head.bias
    opt = build_optimizer(model, preset.train, torch.device("cpu"))
    env = DistEnv(device=torch.device("cpu"))

    def head_train() -> float:
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = linear_cross_entropy(hh, ww, None if bias is None else bias.detach(), y.flatten())
        loss.backward()
        return float(loss.detach())

    def head_eval() -> float:
        return float(linear_token_scores(h, w, bias, y.flatten())[0].mean())

    def train_step() -> float:
        model.train()
        loss = accumulate(
            model, [(x, y)], env=env, precision="fp32", strategy="ddp", ignore_index=-100
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    def evaluate() -> float:
        model.eval()
        return evaluate_tokens(model, tokens, window=t, batch_size=b, progress=False).loss

    return {
        "head, train": head_train, "head, eval": head_eval,
        "train step": train_step, "eval": evaluate,
    }  # fmt: skip


def _run(fn: Callable[[], float], kernel: bool) -> tuple[float, float]:
    os.environ[ce_rows.ENV] = "1" if kernel else "0"
    t0 = time.perf_counter()
    loss = fn()
    return time.perf_counter() - t0, loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--presets", nargs="+", default=["librarian-1.3m", "lumiere-1m", "lumenbase-128m"]
    )
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    os.environ.pop(ce_rows.ENV, None)
    if (why := ce_rows.unavailable()) is not None:
        print(f"the kernel is unavailable here: {why}")
        return 1
    tune_malloc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | task | kernel on: median ms | q25 | torch ops: median ms | q25 | off / on |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.presets:
        for task, fn in _tasks(name).items():
            on, off = [], []
            for _ in range(2):  # warm-up, and the two sides' losses compared
                (_, a), (_, b) = _run(fn, True), _run(fn, False)
            if task != "train step" and abs(a - b) > 1e-5 * abs(b):
                raise SystemExit(f"{name} {task}: the kernel's loss {a} != torch's {b}")
            for _ in range(args.repeats):
                on.append(_run(fn, True)[0])
                off.append(_run(fn, False)[0])
            q = lambda s: statistics.quantiles(s, n=4)[0] * 1e3  # noqa: E731
            m_on, m_off = statistics.median(on) * 1e3, statistics.median(off) * 1e3
            print(
                f"| {name} | {task} | {m_on:.1f} | {q(on):.1f} | {m_off:.1f} | {q(off):.1f} "
                f"| {m_off / m_on:.2f}x |",
                flush=True,
            )
    os.environ.pop(ce_rows.ENV, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
