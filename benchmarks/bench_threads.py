"""Training-step time at each CPU thread count, interleaved in one process.

Why: torch sizes its thread pool from the CPUs it sees; on a shared or quota-limited
host that can be more threads than the cores it actually gets, and every parallel
region then waits for a descheduled thread. This times one librarian-1.3m training step
(the trainer's chunked-loss forward, backward, fused AdamW) at 1..N threads, the counts
alternating step by step so that the host's load hits each alike, and prints the median,
the spread and the load average. `lumenlm --threads N` / OMP_NUM_THREADS pick a count.

    .venv/bin/python benchmarks/bench_threads.py --steps 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench_loss_chunked import MODELS, _no_dropout
from lumenlm.devices import usable_cpu_cores
from lumenlm.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="librarian-1.3m", choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    make, batch, context = MODELS[args.model]
    torch.manual_seed(0)
    model = GPT(_no_dropout(make()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, model.config.vocab_size, (batch, context))
    y = torch.randint(0, model.config.vocab_size, (batch, context))
    counts = list(range(1, max(2, len(os.sched_getaffinity(0))) + 1))
    times: dict[int, list[float]] = {n: [] for n in counts}
    load = [os.getloadavg()[0]]
    for i in range(args.warmup + args.steps):
        for n in counts if i % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            t = time.perf_counter()
            model(x, y, return_logits=False).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[n].append(time.perf_counter() - t)
    load.append(os.getloadavg()[0])
    print(
        f"{args.model} B={batch} T={context}; usable cores {usable_cpu_cores()}; "
        f"load average {load[0]:.1f} -> {load[1]:.1f}"
    )
    for n, v in times.items():
        print(
            f"  {n} threads: {statistics.median(v) * 1e3:8.1f} ms/step "
            f"({min(v) * 1e3:.0f}..{max(v) * 1e3:.0f})"
        )


if __name__ == "__main__":
    main()
