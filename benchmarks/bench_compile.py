"""Does `torch.compile` pay for a training step on this CPU? Eager against compiled, for
lumenlm and HF transformers, interleaved in one process.

Why: the issue asks for `torch.compile` "where it pays for its compile time", so whether
`train.compile` should be on by default is a measurement, per CPU. `python -m benchmarks
--compile` compiles every toolkit, each in processes of its own; this puts the four
steps (lumenlm and HF, eager and compiled) in one process on the same weights and
batch, in interleaved rounds, so a slow spell of the shared host hits them all alike.
Each step is the suite's own (`toolkits.build_lumenlm` / `build_hf` at the "equal"
settings: fp32, tuned malloc, fused AdamW, clipping); compiled, lumenlm's forward takes
the plain loss (inductor fuses it; `GPT._chunked_loss_applies`). Reported: median
tokens/s (min-max over the rounds), the first step's seconds (the cold compile) and loss,
and the ratios compiled/eager.

    .venv/bin/python benchmarks/bench_compile.py [--presets librarian-1.3m lumiere-1m] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import toolkits
from lumenlm.allocator import tune_malloc
from lumenlm.devices import cpu_bf16_native, cpu_info
from shapes import suite_shape

SIDES = (("lumenlm", False), ("lumenlm", True), ("hf", False), ("hf", True))


def measure(preset: str, rounds: int, root: Path) -> None:
    """Time the four steps of `preset` in interleaved rounds and print one line each."""
    d = root / preset
    cfg = toolkits.save_preset(preset, d).config
    shape = suite_shape(preset, cfg.context_length)
    device = torch.device("cpu")
    runners = {}
    for kind, compiled in SIDES:
        settings = toolkits.settings_for(kind, "equal", "cpu", "fp32", compiled)
        build = toolkits.build_lumenlm if kind == "lumenlm" else toolkits.build_hf
        runners[(kind, compiled)] = build(d / kind, preset, settings, device, shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (shape.batch, shape.context), generator=gen)
    y = torch.cat([x[:, 1:], torch.full((shape.batch, 1), toolkits.IGNORE)], 1)
    first = {}
    for key, runner in runners.items():
        runner.train_mode(True)
        t = time.perf_counter()
        loss = runner.train_step(x, y)
        first[key] = (time.perf_counter() - t, loss)
        runner.train_step(x, y)  # warm-up: the second step of a compiled model may recompile
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            t = time.perf_counter()
            runner.train_step(x, y)
            times[key].append(time.perf_counter() - t)
    tokens = shape.batch * shape.context
    med = {key: statistics.median(ts) for key, ts in times.items()}
    for (kind, compiled), ts in times.items():
        label = f"{toolkits.LABELS[kind]} {'compiled' if compiled else 'eager'}"
        sec, loss = first[(kind, compiled)]
        print(
            f"{preset} {shape.batch}x{shape.context} {label}: {tokens / med[(kind, compiled)]:,.0f} "
            f"tok/s ({tokens / max(ts):,.0f}-{tokens / min(ts):,.0f}); first step {sec:.1f} s, "
            f"loss {loss:.6f}"
        )
    print(
        f"{preset}: compiled/eager lumenlm "
        f"{med[('lumenlm', False)] / med[('lumenlm', True)]:.2f}x, HF "
        f"{med[('hf', False)] / med[('hf', True)]:.2f}x",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["librarian-1.3m", "lumiere-1m"])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    tune_malloc()
    name, flags = cpu_info()
    print(
        f"CPU {name or '?'} (avx2 {'avx2' in flags}, avx512f {'avx512f' in flags}, native "
        f"bf16 {cpu_bf16_native()}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved rounds"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            measure(preset, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
