"""Training throughput: the `lumenlm train` loop vs a plain Hugging Face training loop.

Both sides train the same architecture from the same initial weights (the HF model is
`lumenlm export` of ours) on the same synthetic tokens in the same order, with the same
batch, precision (fp16 with a gradient scaler on both sides), AdamW (fused where torch
has it; decay on matrices only), clipping at 1.0 and, with `--compile`, torch.compile
(ours compiles the model with its loss; the HF loop compiles the model, as users do). Our side is the real trainer (`lumenlm.train.train`),
with its logging, sampler and step bookkeeping; tokens/s are read from its
metrics.jsonl (one record per step). The HF side is the loop a user would write:
forward, cross-entropy on the logits, backward, clip, step, `loss.item()`.

Rounds alternate the two sides so that a slow spell of the host hits both; each round
reports the median tokens/s over its steps after the first `--skip` (warm-up and
compilation). The ratio is ours / HF: > 1 means lumenlm trains faster. MFU is shown
when the peak is known (CUDA GPUs by name, or `--peak-tflops`).

    .venv/bin/python benchmarks/bench_train.py                      # CPU, small Llama shape
    .venv/bin/python benchmarks/bench_train.py --device cuda --precision bf16 --compile \\
        --preset lumenbase-128m --model-set n_layers=12 --batch-size 16 --context 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumenlm.config import parse_value
from lumenlm.data.tokens import write_token_dataset
from lumenlm.export.hf import export_hf
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from lumenlm.train import train
from lumenlm.train.data import StepSampler, open_windows
from lumenlm.train.metrics import flops_per_token, guess_peak_flops, matmul_params
from lumenlm.train.optim import build_optimizer
from lumenlm.train.precision import configure_matmul, make_scaler
from shapes import SMALL_LLAMA
from timing import timed
from toolkits import hf_train_step, load_hf


def make_tokens(path: Path, vocab: int, n_train: int, n_val: int) -> Path:
    """A prepared-dataset dir of uniform random tokens (content does not affect speed)."""
    rng = np.random.default_rng(0)
    splits = {s: rng.integers(0, vocab, n) for s, n in (("train", n_train), ("val", n_val))}
    return write_token_dataset(path, splits, vocab, eot_id=0)


def run_ours(
    args: argparse.Namespace, data: Path, out: Path, model_set: dict
) -> tuple[list[float], float]:
    """Train `args.steps` steps with the real trainer: (tokens/s per step after the skip,
    the first step's loss)."""
    overrides: dict[str, Any] = {
        **{f"model.{k}": v for k, v in model_set.items()},
        "context_length": args.context,
        "dropout": 0.0,
        "batch_size": args.batch_size,
        "grad_accum": 1,
        "max_steps": args.steps,
        "warmup_steps": 0,
        "log_interval": 1,
        "eval_interval": 10**9,
        "eval_each_epoch": False,
        "eval_batches": 1,
        "checkpoint_interval": 10**9,
        "checkpoint_each_epoch": False,
        "seed": 0,
    }
    if args.peak_tflops:
        overrides["peak_tflops"] = args.peak_tflops
    run = train(
        args.preset,
        data,
        out,
        overrides,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        progress_bar=False,
    )
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r for r in records if "loss" in r]
    return [r["tokens_per_s"] for r in steps[args.skip :]], steps[0]["loss"]


def run_hf(args: argparse.Namespace, hf: torch.nn.Module, data: Path) -> tuple[list[float], float]:
    """The same steps as a hand-written loop around the transformers model: (tokens/s per
    step after the skip, the first step's loss). Each timed step includes fetching the
    batch and copying it to the device, as the trainer's tokens/s does."""
    device = torch.device(args.device)
    opt = build_optimizer(hf, _train_cfg(), device)
    scaler = make_scaler(args.precision, device)  # fp16: the same loss scaling as ours
    model = torch.compile(hf) if args.compile else hf
    # the trainer's batches, in the trainer's order (same seed)
    windows = open_windows(data, "train", args.context, None)
    sampler = StepSampler(len(windows), 0, args.batch_size, 1, 0, 1)
    B, T = args.batch_size, args.context

    def one_step() -> float:
        (idx,) = sampler.step_indices()
        sampler.advance()
        x, y = (t.to(device) for t in windows.get_batch(idx))
        return hf_train_step(
            model, opt, x, y, args.precision, scaler, own_loss=False, clip_params=hf.parameters()
        )

    out, first_loss = [], float("nan")
    for step in range(args.steps):
        seconds, loss = timed(one_step, args.device)
        if step == 0:
            first_loss = loss
        if step >= args.skip:
            out.append(B * T / seconds)
    return out, first_loss


def _train_cfg() -> Any:
    from lumenlm.config import TrainConfig

    return TrainConfig(weight_decay=0.1, lr=3e-4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="lumenbase-128m")
    ap.add_argument(
        "--model-set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="model field override (repeatable); default for lumenbase-128m on CPU: a 4-layer d256 shape",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--context",
        type=int,
        default=None,
        help="default: 256 for the small CPU shape, else the preset's",
    )
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    if args.steps <= args.skip:
        ap.error("--steps must be larger than --skip")

    small = args.model_set is None and args.preset == "lumenbase-128m" and args.device == "cpu"
    if args.model_set is None:
        model_set = dict(SMALL_LLAMA) if small else {}
    else:
        model_set = {}
        for item in args.model_set:
            key, _, value = item.partition("=")
            model_set[key] = parse_value(value)
    preset_cfg = get_preset(args.preset).model
    if args.context is None:
        args.context = 256 if small else preset_cfg.context_length
    cfg = preset_cfg.with_dropout(0.0).replace(context_length=args.context, **model_set)
    device = torch.device(args.device)
    configure_matmul(device, tf32=True)
    torch.manual_seed(0)
    ours = GPT(cfg)
    per_token = flops_per_token(matmul_params(ours), cfg.n_layers, cfg.context_length, cfg.d_model)
    peak = (
        args.peak_tflops * 1e12
        if args.peak_tflops
        else guess_peak_flops(device.type, args.precision)
    )
    B, T = args.batch_size, args.context
    print(
        f"device={args.device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})"
        f" torch={torch.__version__} threads={torch.get_num_threads()} precision={args.precision}"
        f" compile={args.compile}"
    )
    print(
        f"model: {args.preset} {model_set or ''} -> {ours.num_parameters():,} parameters;"
        f" batch {B} x {T} tokens; {args.steps} steps per round, first {args.skip} skipped"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = make_tokens(
            tmp_path / "data", cfg.vocab_size, (args.steps * B + 2) * T + 1, 4 * B * T
        )
        export_hf(ours, tmp_path / "hf")
        del ours
        ours_tps, hf_tps = [], []
        print(f"{'round':>5} {'lumenlm tok/s':>14} {'HF tok/s':>10} {'lumenlm/HF':>10}")
        for r in range(args.rounds):
            tps, loss_ours = run_ours(args, data, tmp_path / f"runs{r}", model_set)
            a = statistics.median(tps)
            hf = load_hf(tmp_path / "hf", device, attn_implementation="sdpa")
            hf.train()
            tps, loss_hf = run_hf(args, hf, data)
            b = statistics.median(tps)
            if r == 0:  # same initial weights and first batch: the same loss (rounding aside)
                print(f"first-step loss: lumenlm {loss_ours:.6f}, HF {loss_hf:.6f}")
            del hf
            ours_tps.append(a)
            hf_tps.append(b)
            print(f"{r:>5} {a:14.1f} {b:10.1f} {a / b:10.2f}")
    a, b = statistics.median(ours_tps), statistics.median(hf_tps)
    line = f"median: lumenlm {a:.1f} tok/s, HF {b:.1f} tok/s, lumenlm/HF {a / b:.2f}"
    if peak:
        line += f"; MFU lumenlm {a * per_token / peak:.1%}, HF {b * per_token / peak:.1%}"
        line += f" (peak {peak / 1e12:.0f} TFLOP/s, {per_token / 1e9:.2f} GFLOP/token)"
    print(line)


if __name__ == "__main__":
    main()
