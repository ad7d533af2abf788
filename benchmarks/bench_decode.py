"""Greedy decode speed: `lumenlm.infer.generate` vs Hugging Face `generate`, same weights.

The HF model comes from `lumenlm.export.hf.export_hf`, so both run identical weights:
GPT-2 and Llama layouts load as transformers' own classes, Lumiere (RMSNorm + SwiGLU +
learned positions) as the exported remote code (`trust_remote_code=True`). The script
checks that both produce the same greedy tokens. Each case times batch 1 and batch 8:
a random 16-token prompt, then exactly N new tokens (EOS ignored; HF with
`min_new_tokens=N`), interleaved repeats (lumenlm fast, lumenlm plain, HF in turn),
medians after a warm-up. Tokens/s counts generated tokens over the whole call (the prompt
is short, so this is decode speed). N is cut to what fits the context after the prompt
(lumiere-1m: 64 - 16 = 48), since HF does not slide past it. Ratios are lumenlm / HF:
> 1 means lumenlm is faster.

Three lumenlm columns: "fast" is the default engine (the fast decode step of
`lumenlm.model.decode_step`: for small fp32 CPU models one C call per token,
`lumenlm.small_step`); "torch-step" the same step in torch ops
(`LUMENLM_SMALL_STEP=0`); "plain" is `generate(..., fast=False)`, every step through
`GPT.forward` with the KV cache (the engine before the fast step). Each figure is given
by wall time and by the process's CPU time (`time.thread_time`, one torch thread): on a
shared host the wall clock also counts waiting for a core, the CPU time does not, so
read the CPU-time ratio there.

`--compile` adds the fast step under torch.compile (its cold compile is timed apart).
lumenbase-128m runs at its real shape (12 layers, d_model 768, vocabulary 32000).

    .venv/bin/python benchmarks/bench_decode.py [--device cpu] [--repeats 5] [--new-tokens 64]
        [--cases librarian-1.3m lumiere-1m lumenbase-128m] [--batches 1 8] [--compile]

The functions (`build`, `measure`, `CASES`) are importable for `python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lumenlm import small_step
from lumenlm.infer import generate
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from timing import sync

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "librarian-1.3m": ("GPT-2 layout", {}),
    "lumiere-1m": ("Lumiere, HF remote code", {}),
    "lumenbase-128m": ("Llama, GQA 12/4", {}),
}
"""preset -> (what its HF side is, ModelConfig overrides)."""
BATCHES = (1, 8)
PROMPT_LEN = 16


def build(preset: str, overrides: dict[str, Any], device: str) -> tuple[GPT, Any]:
    """Our model (random weights, eval) and the same weights as an HF model (loaded
    through the export: stock class or remote code)."""
    from transformers import AutoModelForCausalLM

    from lumenlm.export.hf import REMOTE, export_hf, hf_architecture

    cfg = get_preset(preset).model.with_dropout(0.0).replace(**overrides)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    # transformers' own classes are asked for SDPA; the remote code calls SDPA itself
    # (and does not declare it, which transformers would refuse)
    attn = {} if hf_architecture(cfg) == REMOTE else {"attn_implementation": "sdpa"}
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, f"{d}/hf")
        hf = AutoModelForCausalLM.from_pretrained(
            f"{d}/hf", dtype=torch.float32, trust_remote_code=True, **attn
        )
        hf = hf.eval().to(device)
    return ours.to(device), hf


@dataclass
class Timing:
    """Medians of one contender: tokens/s by wall clock and by CPU time."""

    wall_tps: float
    cpu_tps: float


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    sync(device)
    w, c = time.perf_counter(), time.thread_time()
    out = fn()
    sync(device)
    return time.perf_counter() - w, time.thread_time() - c, out


@contextlib.contextmanager
def _setenv(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` for the block (left alone for None)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            os.environ.pop(name, None) if old is None else os.environ.__setitem__(name, old)


def runners(
    ours: GPT, hf: Any, prompt: torch.Tensor, new_tokens: int, compile: bool = False
) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> a call returning (B, new_tokens) greedy ids: fast, torch-step, plain,
    [compiled], hf."""
    rows = prompt.tolist()
    kw: dict[str, Any] = dict(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)

    def ours_with(small: str | None = None, **extra: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with _setenv(small_step.ENV, small):
                return torch.tensor([r.token_ids for r in generate(ours, rows, **kw, **extra)])

        return run

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )
        return out[:, prompt.shape[1] :].cpu()

    out = {"fast": ours_with(), "torch-step": ours_with(small="0"), "plain": ours_with(fast=False)}
    if compile:
        out["compiled"] = ours_with(compile=True)
    out["hf"] = run_hf
    return out


def measure(
    ours: GPT,
    hf: Any,
    batch: int,
    new_tokens: int = 64,
    repeats: int = 5,
    device: str = "cpu",
    compile: bool = False,
) -> tuple[dict[str, Timing], bool, float | None]:
    """Interleaved repeats of every contender at `batch` rows: (timings by name, whether
    every lumenlm path gave HF's tokens, the compiled step's cold first call in s).
    `new_tokens` is cut to what fits the context after the prompt (HF does not slide)."""
    new_tokens = min(new_tokens, ours.config.context_length - PROMPT_LEN)
    g = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, ours.config.vocab_size, (batch, PROMPT_LEN), generator=g)
    fns = runners(ours, hf, prompt.to(device), new_tokens, compile)
    cold = None
    ids = {}
    for name, fn in fns.items():  # warm-up (and the compile, timed)
        wall, _, ids[name] = _timed(fn, device)
        if name == "compiled":
            cold = wall
    same = all(torch.equal(ids[n], ids["hf"]) for n in ids)
    walls: dict[str, list[float]] = {n: [] for n in fns}
    cpus: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu, _ = _timed(fn, device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    n = batch * new_tokens
    timings = {
        name: Timing(n / statistics.median(walls[name]), n / statistics.median(cpus[name]))
        for name in fns
    }
    return timings, same, cold


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--compile", action="store_true", help="also time compile=True")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a busy machine every small op "
        "otherwise waits for a descheduled thread)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    N, dev = args.new_tokens, args.device
    print(
        f"device={dev} torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={torch.get_num_threads()} prompt={PROMPT_LEN} new_tokens={N} "
        f"repeats={args.repeats} (medians; tok/s by wall clock, [by CPU time])"
    )
    names = ["fast", "torch-step", "plain", *(["compiled"] if args.compile else []), "hf"]
    head = " ".join(f"{n + ' tok/s':>20}" for n in names)
    print(
        f"{'case':44} {'batch':>5} {head} {'fast/HF':>14} {'torch-step/HF':>14} "
        f"{'plain/HF':>14} {'same':>5}"
    )
    for preset in args.cases:
        what, overrides = CASES[preset]
        ours, hf = build(preset, overrides, dev)
        for B in args.batches:
            t, same, cold = measure(ours, hf, B, N, args.repeats, dev, args.compile)
            cells = " ".join(f"{t[n].wall_tps:>10.0f} [{t[n].cpu_tps:>7.0f}]" for n in names)
            ratio = {
                n: f"{t[n].wall_tps / t['hf'].wall_tps:.2f} [{t[n].cpu_tps / t['hf'].cpu_tps:.2f}]"
                for n in ("fast", "torch-step", "plain")
            }
            label = f"{preset} ({what})"
            n_new = min(N, ours.config.context_length - PROMPT_LEN)
            label += f", {n_new} new" if n_new != N else ""
            print(
                f"{label:44} {B:>5} {cells} {ratio['fast']:>14} {ratio['torch-step']:>14} "
                f"{ratio['plain']:>14} "
                f"{'yes' if same else 'NO':>5}"
            )
            if cold is not None:
                print(f"{'':44} compile=True: first call (cold compile) {cold:.1f} s")


if __name__ == "__main__":
    main()
