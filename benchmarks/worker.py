"""One measurement in a process of its own: `python -m benchmarks.worker SPEC.json`.

Why a process per (toolkit, setting, preset): the allocator setup is process-wide
(glibc's mallopt cannot be undone, and what one toolkit's run leaves in the heap
changes the next one's page faults), and so are torch.compile's caches and the thread
pool. The parent (`python -m benchmarks`) writes a JSON spec, runs this module, and
reads the JSON result it writes to `spec["result"]`; the spec says what to build
(`toolkits`), with which `Settings`, and the shapes (`shapes.SuiteShape`).

A "case" spec measures, in this order (training last, since it changes the weights):
evaluation, prefill (one prompt, one new token: the prompt's pass into the KV cache),
greedy decoding at each batch size, and training steps. Every task runs `warmup`
untimed calls first; the result holds the seconds of each timed call, the first
training step's loss and time (compilation included), the evaluation loss and the
decoded ids, so the parent can check that all toolkits computed the same thing.
A "peak" spec times large matmuls instead (the roof for CPU MFU).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SEED_TRAIN, SEED_EVAL, SEED_PREFILL, SEED_DECODE = 0, 1, 2, 100


def setup_allocator(kind: str) -> str:
    """Apply the spec's allocator before torch allocates anything; say what was done."""
    if kind == "system":
        return "system (glibc defaults)"
    from lumenlm.allocator import tune_malloc

    state = tune_malloc()
    return f"tuned mallopt ({state})" if state != "tuned" else "tuned mallopt"


def setup_mkl(kind: str) -> str:
    """With "shim", re-run this worker with `lumenlm.mkl_shim` preloaded where it applies
    (as the `lumenlm` CLI does; before torch is imported); say what was done."""
    from lumenlm import mkl_shim

    if kind != "shim":
        return "system" if not mkl_shim.active() else "shim (inherited)"
    state = mkl_shim.setup()
    return "shim" if state == "active" else f"system ({state})"


def matmul_peak(precision: str, device: str, size: int, repeats: int) -> float:
    """Best FLOP/s of `repeats` (size x size) @ (size x size) matmuls in `precision`."""
    import torch

    from timing import timed

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: first-call dispatch, allocation, thread start-up
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats))
    return 2.0 * size**3 / best


def measure_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one toolkit's runner and time its tasks; see the module docstring."""
    import torch

    import toolkits
    from lumenlm.modelio import read_model_config
    from shapes import SuiteShape
    from timing import samples

    device = torch.device(spec["device"])
    shape = SuiteShape(
        **{**spec["shape"], "decode_batches": tuple(spec["shape"]["decode_batches"])}
    )
    settings = toolkits.Settings(**spec["settings"])
    cfg, _ = read_model_config(spec["lumenlm_dir"])
    if settings.tf32 and device.type == "cuda":
        from lumenlm.train.precision import configure_matmul

        configure_matmul(device, tf32=True)
    t0 = time.perf_counter()
    kind, preset = spec["toolkit"], spec["preset"]
    if kind == "lumenlm":
        runner = toolkits.build_lumenlm(Path(spec["lumenlm_dir"]), preset, settings, device, shape)
    elif kind == "hf":
        runner = toolkits.build_hf(Path(spec["hf_dir"]), preset, settings, device, shape)
    else:
        runner = toolkits.build_nanogpt(
            spec["nanogpt"], Path(spec["hf_dir"]), cfg, preset, settings, device, shape
        )
    out: dict[str, Any] = {"build_s": time.perf_counter() - t0, "precision": runner.precision}
    out["notes"] = runner.notes
    warm, iters, min_s, dev = spec["warmup"], spec["iters"], spec["min_s"], str(device)
    B, T, V = shape.batch, shape.context, cfg.vocab_size

    runner.train_mode(False)
    tokens = torch.randint(0, V, (B * T + 1,), generator=torch.Generator().manual_seed(SEED_EVAL))
    times, loss = samples(
        lambda: runner.evaluate(tokens), dev, warmup=warm, iters=iters, min_s=min_s
    )
    out["eval"] = {"times": times, "tokens": B * T, "loss": loss}

    g = torch.Generator().manual_seed(SEED_PREFILL)
    prompt = torch.randint(0, V, (1, shape.prefill), generator=g)
    times, _ = samples(
        lambda: runner.generate(prompt, 1), dev, warmup=warm, iters=iters, min_s=min_s
    )
    out["prefill"] = {"times": times, "tokens": shape.prefill}

    for b in shape.decode_batches:
        g = torch.Generator().manual_seed(SEED_DECODE + b)
        prompt = torch.randint(0, V, (b, shape.prompt), generator=g)
        times, ids = samples(
            lambda p=prompt: runner.generate(p, shape.new_tokens),
            dev,
            warmup=warm,
            iters=iters,
            min_s=min_s,
        )
        out[f"decode_{b}"] = {"times": times, "tokens": b * shape.new_tokens, "ids": ids.tolist()}

    runner.train_mode(True)
    g = torch.Generator().manual_seed(SEED_TRAIN)
    n_steps = 1 + spec["train_warmup"] + iters
    seqs = torch.randint(0, V, (n_steps, B, T + 1), generator=g)
    batches = []
    for s in seqs:
        y = s[:, 1:].clone()
        y[:, -1] = toolkits.IGNORE  # the last position is not trained (HF's labels=x)
        batches.append((s[:, :T].contiguous(), y))
    it = iter(batches)
    first_s, first_loss = _timed_step(runner, next(it), dev)
    times, _ = samples(
        lambda: runner.train_step(*next(it)), dev, warmup=spec["train_warmup"], iters=iters
    )
    out["train"] = {
        "times": times,
        "tokens": B * T,
        "first_loss": first_loss,
        "first_step_s": first_s,
    }
    if shape.dropout:
        # the same steps again with the preset's dropout, in each toolkit's own code
        runner.set_dropout(shape.dropout)
        it = iter(batches)
        times, _ = samples(
            lambda: runner.train_step(*next(it)), dev, warmup=1 + spec["train_warmup"], iters=iters
        )
        out["train_dropout"] = {"times": times, "tokens": B * T}
    return out


def _timed_step(runner: Any, batch: Any, device: str) -> tuple[float, float]:
    from timing import timed

    return timed(lambda: runner.train_step(*batch), device)


def main(argv: list[str] | None = None) -> int:
    spec_path = Path((argv if argv is not None else sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    mkl = setup_mkl(spec.get("settings", {}).get("mkl", "system"))
    allocator = setup_allocator(spec.get("settings", {}).get("allocator", "tuned"))
    import torch

    torch.set_num_threads(spec["threads"])
    result: dict[str, Any] = {
        "allocator": allocator, "mkl": mkl, "threads": torch.get_num_threads()
    }  # fmt: skip
    if spec["kind"] == "peak":
        result["peak"] = {
            p: matmul_peak(p, spec["device"], spec["size"], spec["repeats"])
            for p in spec["precisions"]
        }
    else:
        result.update(measure_case(spec))
    from lumenlm.modelio import atomic_write_text

    atomic_write_text(Path(spec["result"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
