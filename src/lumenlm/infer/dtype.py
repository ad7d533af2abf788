"""The inference dtype, and "auto": bf16 weights only where they are native, faster for
this model, and close to fp32's numbers.

Why: bf16 halves the weights' memory and, on hardware that has it, runs the products
several times faster (an AMX CPU scored 2.0-2.7x more tokens/s in bf16,
benchmarks/RESULTS.md). Where bf16 is emulated (AVX2-only CPUs, most laptops) it is
about 100x slower than fp32 in a matmul, and on any hardware a model may be one whose
logits bf16 rounds too far. So `--dtype auto` (the default of generate, chat and serve)
decides per model and per machine:

1. Only a CUDA GPU with native bf16 or a CPU with AMX-BF16 / AVX512-BF16
   (`devices.cpu_bf16_native`) is a candidate. Anything else (AVX2-only or unknown CPUs,
   MPS, GPUs without native bf16) gets fp32 at once: no probe, no copy, no output.
2. The fp32 model and a bf16 copy score `PROBE_TEXT` (through the model's tokenizer;
   seeded ids without one), `PROBE_TOKENS` positions at most. bf16 is kept only if, at
   every position, the total variation distance between the two next-token
   distributions, max over sets of tokens of |P_fp32(set) - P_bf16(set)|, is at most
   `TV_TOLERANCE`: no sampled outcome becomes more or less likely by more than that,
   and greedy decoding keeps fp32's token wherever fp32's top two are more than
   2 x `TV_TOLERANCE` apart in probability.
3. On a CPU, bf16 must also decode at least `SPEED_MARGIN` times faster than fp32 on a
   short greedy run (batch 1, the engine's own `Decoder`: prefill and one-token steps,
   best of `SPEED_ROUNDS` alternating rounds): for a model of a million parameters the
   step is bound by per-op overhead, and bf16's extra casts can make it slower. On CUDA
   the speed is not probed: bf16 tensor cores are the reason the GPU is there.

One line on stderr says what auto chose and the numbers it chose on (only where a probe
ran). The speed probe is timed, so near the margin two runs can choose differently;
pass an explicit `--dtype` where outputs must be reproducible, or set
`LUMENLM_DTYPE_AUTO=fp32` to make auto fp32 without probing (the test suite does). A
model with hooks attached is not probed (its copy would carry them) and stays fp32.
Explicit `--dtype fp32|bf16|fp16` are taken as given (bf16 on a CPU without native bf16
warns, `modelio.load`). Evaluation and inspection default to fp32, so reported
metrics and activations are exact unless asked otherwise.

Tests: tests/test_infer_dtype.py fakes the hardware and the clock to check the policy,
and runs the tolerance check for real (bf16's numerics are the same where it is
emulated; only its speed differs).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from lumenlm.devices import cpu_bf16_native
from lumenlm.model import GPT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

PROBE_TEXT = (
    "Once upon a time, in a small town by the sea, there lived an old librarian who "
    "kept every book she had ever read. One morning a girl knocked on her door and asked "
    "for a story nobody had written yet. The librarian smiled, took a blank page from "
    "her desk, and said: then we will write it together."
)
"""Ordinary prose: the kind of text a model is asked to continue."""
PROBE_TOKENS = 64
"""Positions scored by the tolerance check (cut to the model's context length)."""
TV_TOLERANCE = 0.05
"""Largest total variation distance between fp32's and bf16's next-token distributions
at any probe position. Measured with bf16 weights and activations (emulated: the same
numerics) on three models trained with this project, over the probe text and eight
64-token windows of their validation text: 0.0095 (a Lumiere, Tiny Shakespeare), 0.0095
and 0.023 (two Librarians, TinyStories); `benchmarks/RESULTS.md`, "Inference dtype". A
model that bf16 moves further stays fp32."""
SPEED_MARGIN = 1.10
"""On a CPU, bf16 must decode at least 10% faster than fp32 to be chosen."""
SPEED_ROUNDS = 3
SPEED_PROMPT, SPEED_NEW = 16, 16
ENV = "LUMENLM_DTYPE_AUTO"
"""probe (the default) or fp32: auto is fp32 at once, with no probe."""


def dtype_name(model: torch.nn.Module) -> str:
    """ "fp32", "bf16" or "fp16": the dtype `model`'s weights are in."""
    dtype = next(model.parameters()).dtype
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype))


@dataclass(frozen=True)
class DtypeChoice:
    """What `choose_dtype` picked, and on what evidence."""

    name: str  # "fp32" | "bf16"
    reason: str
    tv: float | None = None  # largest total variation distance to fp32 on the probe
    speedup: float | None = None  # fp32 seconds / bf16 seconds on the decode probe

    @property
    def probed(self) -> bool:
        return self.tv is not None


def bf16_candidate(device: torch.device) -> str | None:
    """Why bf16 could pay on `device` ("native bf16 on ..."), or None where it cannot."""
    if device.type == "cuda":
        # the capability of `device` itself (is_bf16_supported asks the current device);
        # bf16 tensor cores from Ampere (8.0) on; ROCm builds report through is_bf16_supported
        if torch.version.hip:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            native = torch.cuda.get_device_capability(device)[0] >= 8
        return f"native bf16 on {torch.cuda.get_device_name(device)}" if native else None
    if device.type == "cpu" and cpu_bf16_native() is True:
        return "native bf16 on this CPU (AMX-BF16 or AVX512-BF16)"
    return None


def probe_ids(model: GPT) -> torch.Tensor:
    """(1, T) ids of `PROBE_TEXT`, at most `PROBE_TOKENS` (and the context length)."""
    n = min(PROBE_TOKENS, model.config.context_length)
    tok = getattr(model, "tokenizer", None)
    ids: list[int] = tok.encode(PROBE_TEXT).ids if tok is not None else []
    ids = [i for i in ids if i < model.config.vocab_size][:n]
    if len(ids) < 2:  # no tokenizer (or an odd one): seeded ids
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()
    return torch.tensor([ids], device=model.tok_emb.weight.device)


@torch.inference_mode()
def total_variation(reference: GPT, other: GPT, ids: torch.Tensor) -> float:
    """The largest total variation distance, over the positions of `ids` (1, T), between
    the two models' next-token distributions (computed in fp32)."""
    p = torch.softmax(reference(ids).logits[0].float(), dim=-1)
    q = torch.softmax(other(ids).logits[0].float(), dim=-1)
    return float((p - q).abs().sum(-1).max()) / 2


@torch.inference_mode()
def decode_seconds(model: GPT, prompt: list[int], new_tokens: int = SPEED_NEW) -> float:
    """Seconds of one greedy run through the engine's `Decoder` (prefill + steps)."""
    from lumenlm.infer.engine import Decoder

    t0 = time.perf_counter()
    dec = Decoder(model, [prompt], max_new_tokens=new_tokens)
    logits = dec.prefill()
    for _ in range(new_tokens):
        nxt = logits.argmax(-1)
        logits = dec.step(nxt, nxt.tolist())
    return time.perf_counter() - t0


def has_hooks(model: GPT) -> bool:
    """Whether any hook is attached (on a hook point or as a module forward hook)."""
    if model._hook_switch.count > 0:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def decode_times(
    model: GPT, twin: GPT, ids: torch.Tensor, rounds: int = SPEED_ROUNDS
) -> tuple[list[float], list[float]]:
    """(the reference's, the twin's) seconds of `rounds` alternating greedy runs
    (`decode_seconds`, after one warm-up run each) from the first `SPEED_PROMPT` probe
    ids, `SPEED_NEW` new tokens or as many as the context leaves (at least one)."""
    prompt = ids[0, :SPEED_PROMPT].tolist()
    new = max(1, min(SPEED_NEW, model.config.context_length - len(prompt)))
    decode_seconds(model, prompt, new), decode_seconds(twin, prompt, new)  # warm-up
    t_ref, t_twin = [], []
    for _ in range(rounds):
        t_ref.append(decode_seconds(model, prompt, new))
        t_twin.append(decode_seconds(twin, prompt, new))
    return t_ref, t_twin


def _twin(model: GPT, dtype: torch.dtype) -> GPT:
    """A copy of `model` in `dtype` (the tokenizer shared, not copied; cached decode
    weights left behind). Each floating parameter and buffer is cast on the way into the
    copy (deepcopy's memo), so at most the fp32 model plus one copy in `dtype` exist,
    never two fp32 copies; tied weights stay tied."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
    for b in model.buffers():
        if b.is_floating_point() and id(b) not in memo:
            memo[id(b)] = b.detach().to(dtype)
    tok = model.tokenizer
    cached = model.__dict__.pop("_decode_weights", None)
    compiled = model.__dict__.pop("_compiled_decode_step", None)
    try:
        model.tokenizer = None
        twin = copy.deepcopy(model, memo)
    finally:
        model.tokenizer = tok
        if cached is not None:
            model.__dict__["_decode_weights"] = cached
        if compiled is not None:
            model.__dict__["_compiled_decode_step"] = compiled
    twin.tokenizer = tok
    return twin.to(dtype).eval()


def choose_dtype(model: GPT, speed: bool | None = None) -> tuple[GPT, DtypeChoice]:
    """(the model to run, the choice): `model` itself (fp32) or its bf16 copy; see the
    module docstring. `speed` forces the decode-speed probe on or off (default: on a CPU
    only). `model` must be the fp32 model, in eval mode."""
    device = model.tok_emb.weight.device
    if os.environ.get(ENV, "probe").strip().lower() == "fp32":
        return model, DtypeChoice("fp32", f"{ENV}=fp32")
    why = bf16_candidate(device)
    if why is None:
        return model, DtypeChoice("fp32", f"no native bf16 on {device.type}")
    if has_hooks(model):
        return model, DtypeChoice("fp32", "hooks are attached (a copy would carry them)")
    twin = _twin(model, torch.bfloat16)
    ids = probe_ids(model)
    tv = total_variation(model, twin, ids)
    if not math.isfinite(tv):
        return model, DtypeChoice("fp32", "the probe's next-token distributions are not finite", tv)
    if tv > TV_TOLERANCE:
        return model, DtypeChoice(
            "fp32", f"bf16 moved the next-token distribution by {tv:.3f} (total variation; "
            f"tolerance {TV_TOLERANCE})", tv,
        )  # fmt: skip
    speedup = None
    if speed if speed is not None else device.type == "cpu":
        t32, t16 = decode_times(model, twin, ids)
        speedup = min(t32) / max(min(t16), 1e-12)
        if speedup < SPEED_MARGIN:
            return model, DtypeChoice(
                "fp32", f"bf16 decoded only {speedup:.2f}x as fast (needs {SPEED_MARGIN}x)",
                tv, speedup,
            )  # fmt: skip
    speed_note = f", decodes {speedup:.2f}x faster" if speedup is not None else ""
    return twin, DtypeChoice(
        "bf16", f"{why}; next-token probabilities within {tv:.3f} of fp32's (total "
        f"variation){speed_note}", tv, speedup,
    )  # fmt: skip


def auto_dtype(model: GPT, what: str = "lumenlm") -> GPT:
    """`choose_dtype` for `--dtype auto`, with one line on stderr where a probe ran."""
    model, choice = choose_dtype(model)
    if choice.probed:
        print(f"{what}: --dtype auto chose {choice.name}: {choice.reason}", file=sys.stderr)
    return model
