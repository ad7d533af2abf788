"""bf16 autocast against fp32 in training: the losses after a few hundred steps, and time.

The loop of the slow test in tests/test_train_precision_auto.py, printing its numbers:
the same model (the tiny preset's layout, or the librarian-1.3m shape) trained by
`lumenlm.train` on the same synthetic batches for `--steps` steps in fp32 and in bf16
autocast; reports the first loss, the mean of the last 20 training losses and the final
validation loss of each, their relative differences, and the wall time of each run.
On a CPU without native bf16 the bf16 run is emulated: same numerics, slower.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bf16_parity.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_train_precision_auto as T
from lumenlm.train import train
from train_helpers import make_dataset, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    for label, extra, _, _ in T.PARITY:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data = make_dataset(root / "data", n_train=6000, n_val=600)
            recipe = overrides(
                max_steps=args.steps,
                eval_interval=args.steps,
                eval_batches=8,
                checkpoint_interval=args.steps,
                **extra,
            )
            out = {}
            for precision in ("fp32", "bf16"):
                t = time.perf_counter()
                run = train(
                    "tiny", data, root / precision, recipe, device="cpu",
                    precision=precision, progress_bar=False,
                )  # fmt: skip
                wall = time.perf_counter() - t
                lines = (run / "metrics.jsonl").read_text().splitlines()
                rows = [json.loads(x) for x in lines if x]
                losses = [r["loss"] for r in rows if "loss" in r]
                val = [r["val_loss"] for r in rows if "val_loss" in r][-1]
                out[precision] = (losses[0], sum(losses[-20:]) / 20, val, wall)
        (first, f_tr, f_val, f_s), (_, b_tr, b_val, b_s) = out["fp32"], out["bf16"]
        print(
            f"{label}: first loss {first:.4f}; last-20 train loss fp32 {f_tr:.4f} bf16 "
            f"{b_tr:.4f} (rel {abs(b_tr - f_tr) / f_tr:.4f}); val fp32 {f_val:.4f} bf16 "
            f"{b_val:.4f} (rel {abs(b_val - f_val) / f_val:.4f}); wall fp32 {f_s:.0f} s "
            f"bf16 {b_s:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
