"""MKL with and without lumenlm's shim (`lumenlm.mkl_shim`): products, training, eval.

Each round starts two child processes of this script, one with the shim preloaded and
one without (`LUMENLM_MKL=system`), in alternating order; each child times every case
(after a warm-up, the median of `--repeats` calls) and prints JSON. Reported: the
median over rounds of each side's time, and shim / no-shim speed (the median of the
per-round ratios; > 1: the shim is faster). Cases: the fp32 products of the librarian
head (forward, and both gradients), a layer's products, a 2048^3 product, and whole
training steps (forward, chunked loss, backward, clip, fused AdamW) and evaluations
(`evaluate_tokens`) of seeded librarian-1.3m and lumiere-1m models at the suite's
shapes, no dropout. Each child also reports the largest error of a 1024^3 product
against fp64, relative to the sum of the absolute terms (fp32 GEMM's error bound
scale), and the training step's first loss: the two sides must agree to rounding.

    .venv/bin/python benchmarks/bench_mkl.py [--rounds 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = {
    "head forward (4096x128 @ 128x8000)": (4096, 128, 8000),
    "head grad_h (4096x8000 @ 8000x128)": (4096, 8000, 128),
    "head grad_W (8000x4096 @ 4096x128)": (8000, 4096, 128),
    "layer qkv (4096x128 @ 128x384)": (4096, 128, 384),
    "2048^3": (2048, 2048, 2048),
}


def _median_s(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def child(repeats: int) -> dict[str, Any]:
    import torch

    from lumenlm import mkl_shim
    from lumenlm.allocator import tune_malloc

    tune_malloc(True)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    out: dict[str, Any] = {"shim": mkl_shim.active() is not None, "times": {}}
    g = torch.Generator().manual_seed(0)
    for name, (m, k, n) in PRODUCTS.items():
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        out["times"][name] = _median_s(lambda a=a, b=b: torch.mm(a, b), repeats)
    a = torch.randn(1024, 1024, generator=g, dtype=torch.float64)
    b = torch.randn(1024, 1024, generator=g, dtype=torch.float64)
    exact = a @ b
    bound = a.abs() @ b.abs()
    out["gemm_rel_err"] = ((a.float() @ b.float()).double() - exact).abs().div(bound).max().item()
    out["times"].update(_model_cases(repeats, out))
    return out


def _model_cases(repeats: int, out: dict[str, Any]) -> dict[str, float]:
    import torch

    from lumenlm.evaluate import evaluate_tokens
    from lumenlm.model import GPT
    from lumenlm.presets import get_preset
    from lumenlm.train.optim import build_optimizer

    times = {}
    out["first_loss"] = {}
    for name, (B, T) in (("librarian-1.3m", (32, 128)), ("lumiere-1m", (32, 64))):
        preset = get_preset(name)
        torch.manual_seed(0)
        model = GPT(preset.model.with_dropout(0.0))
        opt = build_optimizer(model, preset.train, torch.device("cpu"))
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, preset.model.vocab_size, (B, T), generator=g)
        y = torch.randint(0, preset.model.vocab_size, (B, T), generator=g)
        out["first_loss"][name] = model(x, y, return_logits=False).loss.item()

        def step(model: GPT = model, opt: Any = opt, x: Any = x, y: Any = y) -> None:
            model(x, y, return_logits=False).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        model.train()
        times[f"{name} train step {B}x{T}"] = _median_s(step, repeats)
        model.eval()
        tokens = torch.randint(0, preset.model.vocab_size, (B * T + 1,), generator=g)
        times[f"{name} eval {B}x{T}"] = _median_s(
            lambda m=model, t=tokens, T=T, B=B: evaluate_tokens(
                m, t, window=T, batch_size=B, progress=False
            ),
            repeats,
        )
    return times


def run_child(shim: bool, repeats: int) -> dict[str, Any]:
    from lumenlm import mkl_shim

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", mkl_shim.ACTIVE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    if shim:
        lib = mkl_shim.build()
        if lib is None:
            raise SystemExit("no C compiler: the shim cannot be built here")
        env = mkl_shim.preload_env(lib, env)
        env.pop(mkl_shim.ENV, None)
    else:
        env[mkl_shim.ENV] = "system"
    cmd = [sys.executable, __file__, "--child", "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats)))
        return
    from lumenlm import mkl_shim

    why = mkl_shim.applies({})
    print(f"shim applies here: {'yes' if why is None else 'no, ' + why}")
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for r in range(args.rounds):
        for shim in (True, False) if r % 2 == 0 else (False, True):
            runs[shim].append(run_child(shim, args.repeats))
    assert all(x["shim"] for x in runs[True]) and not any(x["shim"] for x in runs[False])
    print("| case | no shim ms | shim ms | shim speed-up (rounds) |")
    print("|---|---:|---:|---:|")
    for case in runs[True][0]["times"]:
        on = [x["times"][case] for x in runs[True]]
        off = [x["times"][case] for x in runs[False]]
        ratios = [b / a for a, b in zip(on, off)]
        print(
            f"| {case} | {statistics.median(off) * 1e3:.2f} | {statistics.median(on) * 1e3:.2f} "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    for shim in (False, True):
        x = runs[shim][0]
        losses = ", ".join(f"{k} {v:.6f}" for k, v in x["first_loss"].items())
        print(f"{'shim' if shim else 'no shim'}: 1024^3 product max error / sum|terms| "
              f"{x['gemm_rel_err']:.2e}; first losses {losses}")  # fmt: skip


if __name__ == "__main__":
    main()
