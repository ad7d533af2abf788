"""Cost of the hook points when none is attached: today's model against the model as it
was before hook points (src/lumenlm/model.py at a git revision, loaded as a module).

Same weights (the state dicts have the same keys), same inputs, same process, repeats
interleaved, alternating which runs first (A B B A ...); reports medians and the ratio (before / now: 1.00 = the same
speed, > 1 = now is faster). Also shows what an attached hook costs (a cache of every
hook point) for scale. Modes: forward (inference), fwd+bwd (training, with loss), and
one-token decode steps over a KV cache (generation).

    .venv/bin/python benchmarks/bench_hooks.py [--baseline 17680ff] [--repeats 11]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lumenlm.model import GPT
from lumenlm.presets import get_preset
from timing import timed

CASES = [  # (label, preset, batch, seq)
    ("librarian-1.3m (GPT-2 style)", "librarian-1.3m", 8, 128),
    ("tiny (Llama style, GQA 4/2)", "tiny", 8, 64),
]


def baseline_gpt(rev: str) -> type:
    """The GPT class of src/lumenlm/model.py at git revision `rev`."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{rev}:src/lumenlm/model.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "lumenlm_model_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("lumenlm_model_baseline", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.GPT


def modes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    def forward() -> object:
        with torch.inference_mode():
            return model(x).logits

    def train() -> object:
        model.zero_grad(set_to_none=True)
        loss = model(x, targets=x).loss
        loss.backward()
        return loss

    def decode() -> object:  # one row: per-call overhead (where hook checks would show)
        with torch.inference_mode():
            cache = model.new_cache(1, 32)
            model(x[:1, :8], cache=cache)
            for t in range(8, 32):
                model(x[:1, t : t + 1], cache=cache)
        return cache

    return {"forward": forward, "fwd+bwd": train, "decode 24 tokens, batch 1": decode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default="17680ff", help="git revision before hook points")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    Before = baseline_gpt(args.baseline)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, baseline {args.baseline}")
    print("| case | mode | before ms | now ms | before / now | now, every hook cached ms |")
    print("|---|---|---:|---:|---:|---:|")
    for label, preset, batch, seq in CASES:
        cfg = get_preset(preset).model.with_dropout(0.0)
        now = GPT(cfg).eval()
        before = Before(cfg).eval()
        before.load_state_dict(now.state_dict())
        x = torch.randint(0, cfg.vocab_size, (batch, seq))
        with torch.inference_mode():
            assert torch.equal(now(x).logits, before(x).logits)  # the very same numbers
        m_now, m_before = modes(now, x), modes(before, x)
        for mode in m_now:
            t_now: list[float] = []
            t_before: list[float] = []
            t_hooked: list[float] = []
            for fn in (m_now[mode], m_before[mode]):  # warm-up
                fn()
            for i in range(args.repeats):  # ABBA: neither side always runs first
                pair = [(m_before[mode], t_before), (m_now[mode], t_now)]
                for fn, times in pair if i % 2 == 0 else pair[::-1]:
                    times.append(timed(fn, "cpu")[0])
            if mode == "forward":
                for _ in range(max(3, args.repeats // 3)):
                    with torch.inference_mode():
                        t_hooked.append(timed(lambda m=now, x=x: m.run_with_cache(x), "cpu")[0])
            b, n = statistics.median(t_before) * 1e3, statistics.median(t_now) * 1e3
            h = f"{statistics.median(t_hooked) * 1e3:.1f}" if t_hooked else "-"
            print(
                f"| {label}, batch {batch} x {seq} | {mode} | {b:.1f} | {n:.1f} | "
                f"{b / n:.2f} | {h} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
