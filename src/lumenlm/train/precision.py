"""Mixed precision: the "auto" choice, the autocast context and (fp16) a gradient scaler.

"auto" picks bf16 on CUDA when the GPU supports it natively (else fp16 with a scaler)
and fp32 on MPS. On a CPU it picks bf16 only where both hold:

- the CPU has native bf16 (`devices.cpu_bf16_native`: AMX-BF16 or AVX512-BF16). On
  AVX2-only CPUs (where bf16 is emulated, about 100x slower than fp32 in a matmul) and
  where the flags are unknown, auto is fp32 at once, with no probe and no output;
- a short probe says it is faster for THIS model: `PROBE_STEPS` forward+backward steps
  (after one warm-up step each) of a randomly initialised copy of the model at the run's
  shapes (its context length and per-step rows, capped at `PROBE_TOKENS` tokens per
  step), fp32 and bf16 autocast alternating, median seconds per step each. bf16 is chosen
  when fp32's time / bf16's time >= `BF16_MARGIN`. The result is cached on disk
  (`probe_cache_path()`, keyed by the CPU model and flags, the torch version, the thread
  count, the model config and the shape; written atomically; a corrupt file is ignored
  and rewritten), so a run and its resume choose the same, and one line says what was
  chosen and the measured speed-up. `--precision fp32` is always one flag away.

Why a probe and not a table: on native-bf16 CPUs bf16 autocast trains a Llama-style
model about 1.9x faster than fp32 but Lumiere gains almost nothing (the CPU SDPA
backward is 3-5x slower in bf16 at its shapes; issue 16), so only the model's own
step tells. Multi-process runs (torchrun) get fp32 from auto on CPU: one probe per rank
could disagree, and the ranks must train in one precision.

What was and was not measured by this project: the policy (fp32 without native bf16,
bf16 only when the probe says faster, the cache) is tested with a faked CPU and probe
(tests/test_train_precision_auto.py). The loss agreement of bf16 autocast with fp32 over
300 steps (`LOSS_TOLERANCE`) was measured on the AVX2-only EPYC this was written on, in
emulated bf16 (its numerics are bf16's; only its speed is emulated), on the tiny model
and the librarian-1.3m shape; the slow test runs the tiny one everywhere and the
librarian shape only where bf16 is native (emulated, it takes minutes). On a native-bf16
CPU (a 2-core AMD EPYC, Zen 4, AVX512-BF16; bf16 matmul peak 379 GFLOP/s against fp32's
200), `measure_bf16_speedup` at the presets' probe shapes, twice each, gave
librarian-1.3m 1.21x and 1.31x, lumiere-1m 1.07x and 1.26x (near the margin: the cached
probe is what makes a run and its resume agree), lumenbase-128m 1.98x and 2.04x; in
`python -m benchmarks` auto then chose bf16 for lumenbase-128m (265 tokens/s against
183 in fp32, 56% of the bf16 peak) and fp32 for the two small presets.

An explicit bf16 on a CPU without native bf16 prints a one-line warning with the
measured slowdown (`devices.warn_slow_bf16`). bf16 needs no scaler: it has fp32's
exponent range. fp16 gradients underflow without loss scaling, so fp16 always trains
with a `torch.amp.GradScaler` for its device. fp16 on CPU is slow on most processors,
but it runs the same scaler code path as a GPU (skipped steps on overflow, scaler state
in checkpoints), which is how the test suite checks that path on machines without a GPU.

On CUDA, fp32 matmuls use TensorFloat-32 tensor cores unless `train.tf32` is false
(as in nanoGPT); CPU matmuls are never changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

from lumenlm.config import Dtype, ModelConfig
from lumenlm.data.download import cache_dir
from lumenlm.devices import cpu_bf16_native, cpu_info, warn_slow_bf16
from lumenlm.errors import ConfigError
from lumenlm.model import GPT
from lumenlm.modelio import atomic_write_text

BF16_MARGIN = 1.10
"""bf16 must run a training step at least 10% faster than fp32 to be chosen: below
that the gain is within the probe's noise and does not pay for bf16's rounding."""
PROBE_STEPS = 3
"""Timed forward+backward steps per precision (after one warm-up step each)."""
PROBE_TOKENS = 2048
"""At most this many tokens per probe step (whole rows, at least one): the matmuls are
as wide as in the run, while a 128M model's probe stays within seconds on such a CPU."""
LOSS_TOLERANCE = 0.01
"""bf16 autocast's final losses may differ from fp32's by this much (relative) after the
300 steps of the slow parity test. Measured on the 2-core AVX2 EPYC (emulated bf16: the
same bf16 operands and results, only slower): 0.0001-0.0002 on the tiny model and on
the librarian-1.3m shape (benchmarks/RESULTS.md), so 1% leaves room for other CPUs'
summation orders without letting a real divergence pass."""
CACHE_VERSION = 1


@dataclass(frozen=True)
class ProbeResult:
    """Median seconds per forward+backward step in fp32 and in bf16 autocast."""

    fp32_s: float
    bf16_s: float
    rows: int
    context: int

    @property
    def speedup(self) -> float:
        """How many times faster bf16 ran (> 1: bf16 is faster)."""
        return self.fp32_s / max(self.bf16_s, 1e-12)


def resolve_precision(
    precision: str,
    device: torch.device,
    model_cfg: ModelConfig | None = None,
    rows: int | None = None,
    world_size: int = 1,
) -> str:
    """Map "auto" to a concrete precision and check the choice fits the device.

    On a CPU, "auto" can choose bf16 only given the model (`model_cfg`) and the rows per
    step (`rows`) to probe, in a single process; see the module docstring.
    """
    if precision == "auto":
        if device.type == "cuda":
            # emulated bf16 (V100, T4) is slow: those GPUs get fp16 with a scaler
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        if device.type == "cpu" and model_cfg is not None and rows and world_size == 1:
            return auto_cpu_precision(model_cfg, rows)
        return "fp32"
    if precision not in get_args(Dtype):
        choices = ", ".join(get_args(Dtype))
        raise ConfigError(f"unknown precision {precision!r}; choose {choices} or auto")
    if precision == "bf16":
        warn_slow_bf16(device, "--precision bf16")
    return precision


def auto_cpu_precision(
    model_cfg: ModelConfig, rows: int, probe: Callable[..., ProbeResult] | None = None
) -> str:
    """fp32, or bf16 where the CPU has native bf16 and the (cached) probe of this model
    at these shapes says bf16 autocast is at least `BF16_MARGIN` times faster."""
    if cpu_bf16_native() is not True:
        return "fp32"  # emulated or unknown bf16: no probe, nothing printed
    context = model_cfg.context_length
    probe_rows = max(1, min(rows, PROBE_TOKENS // max(1, context)))
    key = probe_key(model_cfg, probe_rows, context)
    result = read_cached_probe(key)
    cached = result is not None
    if result is None:
        result = (probe or measure_bf16_speedup)(model_cfg, probe_rows, PROBE_STEPS)
        write_cached_probe(key, result)
    choice = "bf16" if result.speedup >= BF16_MARGIN else "fp32"
    verdict = "faster" if choice == "bf16" else f"below the {BF16_MARGIN:.2f}x needed"
    print(
        f"lumenlm: --precision auto chose {choice}: on {cpu_info()[0] or 'this CPU'} (native "
        f"bf16) bf16 autocast ran a forward+backward step of this model "
        f"{result.speedup:.2f}x fp32's speed ({verdict}; {result.rows}x{result.context} "
        f"tokens, {'cached probe' if cached else 'probed now'}); --precision fp32 or bf16 "
        "to choose yourself",
        file=sys.stderr,
    )
    return choice


def measure_bf16_speedup(
    model_cfg: ModelConfig, rows: int, steps: int = PROBE_STEPS
) -> ProbeResult:
    """Time `steps` forward+backward steps of a fresh copy of the model in fp32 and in
    bf16 autocast, alternating after one warm-up step each (the global RNG is left as
    it was: the run's initialisation does not change)."""
    cfg = dataclasses.replace(model_cfg, embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    context = cfg.context_length
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(cfg)
        x = torch.randint(0, cfg.vocab_size, (rows, context))
        y = torch.randint(0, cfg.vocab_size, (rows, context))

        def step(precision: str) -> float:
            t = time.perf_counter()
            with autocast(precision, torch.device("cpu")):
                loss = model(x, y, return_logits=False).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        step("fp32"), step("bf16")  # warm-up: first-call allocation and dispatch
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(steps):
            for precision in times:
                times[precision].append(step(precision))
    return ProbeResult(
        statistics.median(times["fp32"]), statistics.median(times["bf16"]), rows, context
    )


# -- the probe cache ------------------------------------------------------------------------


def probe_cache_path() -> Path:
    """One JSON file of probe results under the user cache dir (`$LUMENLM_CACHE`)."""
    return cache_dir() / "precision-auto.json"


def probe_key(model_cfg: ModelConfig, rows: int, context: int) -> str:
    """What the speed ratio depends on: CPU, torch, threads, the model and the shape."""
    name, flags = cpu_info()
    what = {
        "cpu": name,
        "bf16_flags": sorted(f for f in flags if "bf16" in f or "amx" in f),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": dataclasses.asdict(model_cfg),
        "rows": rows,
        "context": context,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _read_cache() -> dict[str, Any]:
    """The cache's entries; {} when the file is missing, unreadable or not ours."""
    try:
        doc = json.loads(probe_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION:
        return {}
    entries = doc.get("entries")
    return entries if isinstance(entries, dict) else {}


def read_cached_probe(key: str) -> ProbeResult | None:
    """The cached result for `key`, or None (absent, or an entry that does not parse)."""
    entry = _read_cache().get(key)
    try:
        result = ProbeResult(
            float(entry["fp32_s"]),
            float(entry["bf16_s"]),
            int(entry["rows"]),
            int(entry["context"]),
        )
    except (TypeError, KeyError, ValueError):
        return None
    return result if result.fp32_s > 0 and result.bf16_s > 0 else None


def write_cached_probe(key: str, result: ProbeResult) -> None:
    """Add `result` to the cache file, atomically; a cache that cannot be written only
    means the next run probes again."""
    entries = _read_cache()
    entries[key] = {
        **dataclasses.asdict(result),
        "speedup": round(result.speedup, 4),
        "cpu": cpu_info()[0],
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(OSError):  # read-only home, full disk: probe again next time
        atomic_write_text(
            probe_cache_path(), json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1)
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on the training device; None for bf16 and fp32 (no need)."""
    if precision != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"precision fp16 needs gradient scaling, which torch does not offer on "
            f"{device.type} ({exc}); use bf16 or fp32"
        ) from None


def configure_matmul(device: torch.device, tf32: bool) -> Callable[[], None]:
    """On CUDA, let fp32 matmuls and convolutions use TF32 (`tf32`) or keep full fp32.

    The setting is process-wide; the returned function puts the previous one back (the
    trainer calls it when `fit` ends, so later work in the same process is unaffected).
    """
    if device.type != "cuda":
        return lambda: None
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32

    def restore() -> None:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]

    return restore
