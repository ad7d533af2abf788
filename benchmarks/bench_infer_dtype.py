"""bf16 against fp32 for inference: how far bf16 moves a trained model's next-token
distribution, how fast each decodes, and what `--dtype auto` picks here.

For each MODEL (a model or run directory), the fp32 model and its bf16 copy
(`lumenlm.infer.dtype`) score the probe text `--dtype auto` uses and, with `=DATA`
(a prepared dataset directory), `--windows` windows of 64 tokens spread over its val
split. Reports the total variation distance between the two next-token distributions
(largest and mean over positions: the quantity `TV_TOLERANCE` bounds), the mean KL,
the largest change of a top-10 token's log-probability, the decode seconds of each
dtype on the probe run (best of 3 interleaved; on a CPU without native bf16, bf16 is
emulated: the same numerics, about 100x slower) and what `choose_dtype` decides on
this machine.

    .venv/bin/python benchmarks/bench_infer_dtype.py MODEL[=DATA] [MODEL[=DATA] ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import lumenlm.infer.dtype as dt
from lumenlm.data.tokens import load_split
from lumenlm.modelio import load


@torch.inference_mode()
def drift(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor) -> np.ndarray:
    """(TV max, TV mean, KL mean, top-10 |d log p| max) of b against a on `ids`."""
    p = torch.log_softmax(a(ids).logits[0].float(), -1)
    q = torch.log_softmax(b(ids).logits[0].float(), -1)
    tv = (p.exp() - q.exp()).abs().sum(-1) / 2
    kl = (p.exp() * (p - q)).sum(-1)
    top = p.topk(min(10, p.shape[-1]), -1)
    dlogp = (q.gather(-1, top.indices) - top.values).abs().max()
    return np.array([tv.max().item(), tv.mean().item(), kl.mean().item(), dlogp.item()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="MODEL[=DATA]")
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args()
    print("| model | positions | TV max | TV mean | KL mean | top-10 dlogp max | "
          "fp32 decode s | bf16 decode s | auto here |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for spec in args.models:
        path, _, data = spec.partition("=")
        model = load(path)
        twin = dt._twin(model, torch.bfloat16)
        ids = dt.probe_ids(model)
        rows = [drift(model, twin, ids)]
        if data:
            toks = load_split(Path(data), "val")
            t = min(64, model.config.context_length)
            for i in range(args.windows):
                o = (len(toks) - t - 1) * i // max(1, args.windows)
                rows.append(
                    drift(model, twin, torch.tensor(toks[o : o + t].astype(np.int64))[None])
                )
        r = np.array(rows)
        t32, t16 = dt.decode_times(model, twin, ids)
        _, choice = dt.choose_dtype(model)
        n = ids.shape[1] + (args.windows * min(64, model.config.context_length) if data else 0)
        print(f"| {Path(path).name} | {n} | {r[:, 0].max():.4f} | {r[:, 1].mean():.4f} | "
              f"{r[:, 2].mean():.1e} | {r[:, 3].max():.3f} | {min(t32):.3f} | "
              f"{min(t16):.3f} | {choice.name}: {choice.reason} |")  # fmt: skip


if __name__ == "__main__":
    main()
