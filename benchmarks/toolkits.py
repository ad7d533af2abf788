"""lumenlm, Hugging Face transformers and nanoGPT behind one interface.

Why: `python -m benchmarks` must time the same four things (a training step, an
evaluation pass, a prefill, greedy decoding) on each toolkit with the same weights and
the same tokens, and say exactly how each one was set up. A `Runner` holds one
toolkit's model with its own code for each of those; `settings_for` says how each
toolkit is configured in the two settings the suite compares:

(a) "default", as each user gets it:
  - lumenlm: what `lumenlm train` does without flags: `--precision auto`
    (`resolve_precision` given the model and the preset's rows: fp32 at once without
    native bf16, else a cached probe of this model decides), evaluation as `lumenlm
    eval` scores (fp32), decoding as `lumenlm generate` (`--dtype auto`), glibc malloc tuned (`lumenlm.allocator.tune_malloc`), MKL's
    fast kernels on AMD CPUs (`lumenlm.mkl_shim`: the CLI re-runs itself with it), fused
    AdamW with decay on matrices (`build_optimizer`, the preset's recipe), the chunked
    linear + cross-entropy (`model(x, y, return_logits=False)` inside the trainer's own
    `accumulate`), no compile.
  - transformers 5.x: `TrainingArguments()`'s defaults: fp32 (bf16=False, fp16=False),
    the optimizer `Trainer.create_optimizer` builds from them (`adamw_torch_fused` on
    torch >= 2.8, weight decay 0), clipping at max_grad_norm 1.0, the model's own loss
    (`labels=`), glibc's default malloc, no compile.
  - nanoGPT's train.py: fp32 on CPU (its `ctx` is a no-op there and the fp16 scaler
    disables itself without CUDA; bf16/fp16 autocast on CUDA), `compile = True`,
    `configure_optimizers` (fused AdamW on CUDA only: the for-loop kernel on CPU, decay
    0.1), clipping at 1.0, glibc's default malloc.
(b) "equal": the same precision, lumenlm's tuned malloc and MKL shim, `build_optimizer`'s
  fused AdamW and compile off (or on, with `--compile`) for everyone; each keeps its own
  loss.

Training targets: row t of a window predicts token t+1 and the last position is not
trained, which is what HF's `labels=input_ids` does, so all three train the same
B x (T-1) targets from the same T inputs and start from the same loss. Evaluation
scores all B x T next tokens. Decoding is greedy, exactly N new tokens, in fp32 weights
(lumenlm's default: the weights `--dtype auto` chose, fp32 unless bf16 is native, close
and faster).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from lumenlm.model import GPT

IGNORE = -100
"""Target id the losses skip (lumenlm's and HF's ignore_index; nanoGPT's is -1)."""

TOOLKITS = ("lumenlm", "hf", "nanogpt")
LABELS = {"lumenlm": "lumenlm", "hf": "HF transformers", "nanogpt": "nanoGPT"}
SETTINGS = ("default", "equal")


@dataclass(frozen=True)
class Settings:
    """How one toolkit is set up for one measurement."""

    precision: str  # "auto" (lumenlm resolves it) | "fp32" | "bf16" | "fp16"
    allocator: str  # "tuned" (lumenlm.allocator.tune_malloc) | "system" (glibc defaults)
    optimizer: str  # "lumenlm" (build_optimizer) | "hf-trainer" | "nanogpt"
    compile: bool
    tf32: bool  # CUDA fp32 matmuls on TF32 tensor cores (no effect on CPU)
    mkl: str = "system"  # "shim" (lumenlm.mkl_shim, where it applies) | "system"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_optimizer(opt: torch.optim.Optimizer, scaler: Any) -> None:
    """The optimizer step (through the gradient scaler for fp16), then zero_grad."""
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def settings_for(
    toolkit: str, setting: str, device_type: str, equal_precision: str, compile: bool
) -> Settings:
    """The `Settings` of `toolkit` in `setting` ("default" or "equal"); see the module
    docstring for where each default comes from."""
    if setting == "equal":
        return Settings(equal_precision, "tuned", "lumenlm", compile, tf32=True, mkl="shim")
    if toolkit == "lumenlm":
        return Settings("auto", "tuned", "lumenlm", False, tf32=True, mkl="shim")
    if toolkit == "hf":
        return Settings("fp32", "system", "hf-trainer", False, tf32=False)
    if device_type == "cuda":  # nanoGPT: bf16 where supported, else fp16 with a scaler
        bf16 = torch.cuda.is_bf16_supported()
        return Settings("bf16" if bf16 else "fp16", "system", "nanogpt", True, tf32=True)
    return Settings("fp32", "system", "nanogpt", True, tf32=True)


def possible_precisions(precision: str, device: torch.device) -> tuple[str, ...]:
    """What `precision` can turn out to be in a worker, known before any worker runs.

    "auto" on a CPU with native bf16 depends on a probe of each model (`lumenlm train`'s
    `auto_cpu_precision`, run in the worker under the MKL shim, as the CLI runs it), so
    it may be fp32 or bf16; elsewhere `resolve_precision` says at once what it is.
    `python -m benchmarks` measures the matmul peak in each, and keeps "auto" apart
    from an explicit fp32 wherever it could be something else."""
    from lumenlm.devices import cpu_bf16_native
    from lumenlm.train.precision import resolve_precision

    if precision == "auto" and device.type == "cpu" and cpu_bf16_native() is True:
        return ("bf16", "fp32")
    return (resolve_precision(precision, device),)


@dataclass
class Runner:
    """One toolkit's model and its own code for each measured task."""

    train_step: Callable[[torch.Tensor, torch.Tensor], float]
    """(inputs (B, T), targets (B, T) with IGNORE at untrained positions) -> the loss."""
    evaluate: Callable[[torch.Tensor], float]
    """flat tokens (B*T + 1) -> mean next-token loss over B windows of T, no grad."""
    generate: Callable[[torch.Tensor, int], torch.Tensor]
    """(prompt (B, P), N) -> the N greedy new ids (B, N), EOS ignored."""
    train_mode: Callable[[bool], Any]
    precision: str
    notes: dict[str, Any]
    set_dropout: Callable[[float], None]
    """Set every dropout rate of the model (embedding, attention, residual) to p."""


def dropout_setter(model: torch.nn.Module) -> Callable[[float], None]:
    """`Runner.set_dropout` for `model`: each `nn.Dropout`'s p, and the float rates that
    attention modules pass to SDPA (lumenlm's and nanoGPT's `attn_dropout`/`dropout`,
    HF Llama's `attention_dropout`; HF GPT-2 passes its `attn_dropout` module's p)."""

    def set_dropout(p: float) -> None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = p
            for name in ("attn_dropout", "attention_dropout", "dropout"):
                if isinstance(getattr(m, name, None), float):
                    setattr(m, name, p)

    return set_dropout


def load_hf(hf_dir: str | Path, device: str | torch.device, **kwargs: Any) -> Any:
    """The transformers model of an `export_hf` directory in fp32 (remote code allowed:
    Lumiere's layout has no stock class), quietly."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, trust_remote_code=True, **kwargs
    )
    return model.to(device)


def save_preset(name: str, d: Path) -> GPT:
    """`name`'s model (seed 0, no dropout) saved as a lumenlm model in `d/lumenlm` and as
    its HF export in `d/hf`, so every toolkit loads the same weights; returns the model."""
    from lumenlm.export.hf import export_hf
    from lumenlm.model import GPT
    from lumenlm.modelio import save_model
    from lumenlm.presets import get_preset

    torch.manual_seed(0)
    model = GPT(get_preset(name).model.with_dropout(0.0))
    save_model(model, d / "lumenlm")
    export_hf(model, d / "hf")
    return model


def hf_train_step(
    model: Any,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    scaler: torch.amp.GradScaler | None,
    own_loss: bool = True,
    clip_params: Any = None,
) -> float:
    """One HF training step: forward (the model's own loss from `labels=x`, or with
    `own_loss=False` cross-entropy on its logits against `y`), backward, clip at 1.0,
    step, zero_grad; returns the loss (one host sync)."""
    from lumenlm.train.precision import autocast

    device = x.device
    with autocast(precision, device):
        if own_loss:
            loss = model(input_ids=x, labels=x).loss
        else:
            logits = model(input_ids=x).logits
    if not own_loss:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)
    params = clip_params if clip_params is not None else model.parameters()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    step_optimizer(opt, scaler)
    return loss.item()


def _windows(tokens: torch.Tensor, batch: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = batch * context
    return tokens[:n].view(batch, context), tokens[1 : n + 1].view(batch, context)


def _optimizer(kind: str, model: torch.nn.Module, preset: str, device: torch.device) -> Any:
    from lumenlm.presets import get_preset
    from lumenlm.train.optim import build_optimizer

    if kind != "lumenlm":
        raise ValueError(f"optimizer {kind!r} is built by its toolkit")
    return build_optimizer(model, get_preset(preset).train, device)


def _maybe_compile(model: torch.nn.Module, settings: Settings) -> torch.nn.Module:
    return torch.compile(model) if settings.compile else model  # type: ignore[return-value]


def build_lumenlm(
    model_dir: Path, preset: str, settings: Settings, device: torch.device, shape: Any
) -> Runner:
    """lumenlm: the trainer's step (`accumulate` with the chunked loss, clip, fused AdamW),
    `lumenlm.evaluate.evaluate_tokens`, and `lumenlm.infer.generate`."""
    from lumenlm.evaluate import evaluate_tokens
    from lumenlm.infer import generate
    from lumenlm.infer.dtype import auto_dtype, dtype_name
    from lumenlm.modelio import load
    from lumenlm.presets import get_preset
    from lumenlm.train.distributed import DistEnv
    from lumenlm.train.loss import accumulate
    from lumenlm.train.precision import autocast, make_scaler, resolve_precision

    raw = load(model_dir, device=device)
    # as `lumenlm train` resolves it: "auto" probes this model at the preset's rows
    # where the CPU has native bf16 (cached on disk), else fp32 at once
    rows = get_preset(preset).train.batch_size
    precision = resolve_precision(settings.precision, device, raw.config, rows)
    # `lumenlm eval` and `lumenlm generate` by default: fp32 scoring, `--dtype auto` decoding
    default = settings.precision == "auto"
    eval_precision = "fp32" if default else precision
    decoder = auto_dtype(raw, "lumenlm generate") if default else raw
    model = _maybe_compile(raw, settings)
    opt = _optimizer(settings.optimizer, raw, preset, device)
    scaler = make_scaler(precision, device)
    env = DistEnv(device=device)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss_sum = accumulate(
            model, [(x, y)], env=env, precision=precision, strategy="ddp",
            ignore_index=IGNORE, scaler=scaler,
        )  # fmt: skip
        if scaler is not None:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        loss, _ = torch.stack([loss_sum.float(), norm.float()]).tolist()
        step_optimizer(opt, scaler)
        return loss

    def evaluate(tokens: torch.Tensor) -> float:
        with autocast(eval_precision, device):
            res = evaluate_tokens(
                model, tokens, window=shape.context, batch_size=shape.batch, progress=False
            )
        return res.loss

    def gen(prompt: torch.Tensor, n: int) -> torch.Tensor:
        res = generate(decoder, prompt.tolist(), temperature=0, max_new_tokens=n, ignore_eos=True)
        return torch.tensor([r.token_ids for r in res])

    return Runner(
        train_step, evaluate, gen, raw.train, precision,
        {"loss": "chunked linear + cross-entropy (return_logits=False)",
         "optimizer": "build_optimizer: AdamW(fused=True), decay on matrices",
         "eval": f"{eval_precision}{' (lumenlm eval --dtype default)' if default else ''}",
         "decode": f"{dtype_name(decoder)} weights"
                   f"{' (lumenlm generate --dtype auto)' if default else ''}; "
                   f"{_decode_blas(decoder)}",
         "dropout": "lumenlm.model.dropout (mask bits from numpy's SFC64, seeded from torch's "
                    "generator; attention: the explicit path)"},
        dropout_setter(raw),
    )  # fmt: skip


def _decode_blas(model: Any) -> str:
    """Which BLAS lumenlm's decode step multiplies through for `model`, and why
    (`lumenlm.blas.decode_choice`, as the step itself made it: the probe's answer is
    kept for the process, and generate's step reuses it)."""
    from lumenlm.model.decode_step import DecodeStep

    return DecodeStep(model).blas


def _hf_trainer_optimizer(model: Any) -> tuple[Any, str]:
    """The optimizer `transformers.Trainer` creates from default `TrainingArguments`."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, report_to="none", use_cpu=not torch.cuda.is_available()
        )
        trainer = Trainer(model=model, args=args)
        opt = trainer.create_optimizer()
    fused = any(g.get("fused") for g in opt.param_groups)
    what = f"Trainer.create_optimizer: {type(opt).__name__}(fused={fused}), optim={getattr(args.optim, 'value', args.optim)}"
    return opt, what


def build_hf(
    hf_dir: Path, preset: str, settings: Settings, device: torch.device, shape: Any
) -> Runner:
    """transformers: the model's own loss (`labels=`), a forward + per-token
    cross-entropy for evaluation, and `generate(min_new_tokens=N)`."""
    from lumenlm.train.precision import autocast, make_scaler

    raw = load_hf(hf_dir, device)
    precision = settings.precision
    if settings.optimizer == "hf-trainer":
        opt, opt_note = _hf_trainer_optimizer(raw)
    else:
        opt, opt_note = _optimizer(settings.optimizer, raw, preset, device), "build_optimizer"
    model = _maybe_compile(raw, settings)
    scaler = make_scaler(precision, device)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        return hf_train_step(model, opt, x, y, precision, scaler, clip_params=raw.parameters())

    @torch.inference_mode()
    def evaluate(tokens: torch.Tensor) -> float:
        x, y = _windows(tokens.to(device), shape.batch, shape.context)
        with autocast(precision, device):
            logits = model(input_ids=x).logits
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
        return float(nll.mean())

    @torch.inference_mode()
    def gen(prompt: torch.Tensor, n: int) -> torch.Tensor:
        prompt = prompt.to(device)
        out = raw.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
            max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
        )  # fmt: skip
        return out[:, prompt.shape[1] :].cpu()

    notes = {
        "loss": "the model's own (labels=)",
        "optimizer": opt_note,
        "attention": getattr(raw.config, "_attn_implementation", "?"),
        "class": type(raw).__name__,
        "dropout": "torch's (nn.Dropout, SDPA dropout_p)",
    }
    return Runner(train_step, evaluate, gen, raw.train, precision, notes, dropout_setter(raw))


# -- nanoGPT ---------------------------------------------------------------------------


def nanogpt_misfit(cfg: Any) -> str | None:
    """Why nanoGPT's GPT cannot hold the model `cfg` exactly, or None when it can: it has
    only GPT-2's layout (LayerNorm eps 1e-5, exact GELU, learned positions, biases
    everywhere or nowhere, tied head, d_model = heads x d_head). Its MLP width is fixed at
    4 x d_model in code; `nanogpt_model` swaps the two MLP linears for others."""
    from lumenlm.export.hf import GPT2, hf_architecture

    if hf_architecture(cfg) != GPT2:
        return f"nanoGPT has only the GPT-2 architecture ({cfg.norm}, {cfg.activation}, {cfg.positions} positions here)"
    if cfg.activation != "gelu" or cfg.norm_eps != 1e-5:
        return "nanoGPT's GPT-2 uses exact GELU and LayerNorm eps 1e-5"
    if cfg.n_heads * cfg.d_head != cfg.d_model or cfg.d_value != cfg.d_head:
        return "nanoGPT needs d_model = n_heads x d_head"
    if not (cfg.attn_bias and cfg.mlp_bias and cfg.norm_bias):
        return "nanoGPT has biases on every linear and norm, or on none"
    return None


def import_nanogpt(path: str | Path) -> Any:
    """nanoGPT's model.py as a module, read from `path` at run time (never vendored)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import nanoGPT from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def nanogpt_model(module: Any, cfg: Any, hf_dir: Path) -> torch.nn.Module:
    """nanoGPT's GPT holding the weights of the GPT-2 export in `hf_dir`, mapped as its own
    `GPT.from_pretrained` maps GPT-2's (Conv1D weights transposed into Linears)."""
    from safetensors.torch import load_file

    conf = module.GPTConfig(
        block_size=cfg.context_length, vocab_size=cfg.vocab_size, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_embd=cfg.d_model, dropout=0.0, bias=True,
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
        model = module.GPT(conf)
    if cfg.d_ff != 4 * cfg.d_model:  # nanoGPT's MLP is 4 x d wide in code
        for block in model.transformer.h:
            block.mlp.c_fc = torch.nn.Linear(cfg.d_model, cfg.d_ff, bias=True)
            block.mlp.c_proj = torch.nn.Linear(cfg.d_ff, cfg.d_model, bias=True)
    hf = load_file(str(hf_dir / "model.safetensors"))
    sd = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in hf.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith(".attn.bias") for k in missing):
        raise RuntimeError(f"nanoGPT weight mapping: missing {missing}, unexpected {unexpected}")
    return model


def build_nanogpt(
    nanogpt_path: str, hf_dir: Path, cfg: Any, preset: str, settings: Settings,
    device: torch.device, shape: Any,
) -> Runner:  # fmt: skip
    """nanoGPT: train.py's step (`logits, loss = model(X, Y)`, scaler, clip 1.0, step,
    zero_grad, `loss.item()`), its `estimate_loss` forward, and `GPT.generate` with
    top_k=1 (greedy; nanoGPT has no KV cache, so every token re-reads the context)."""
    raw = nanogpt_model(import_nanogpt(nanogpt_path), cfg, hf_dir).to(device)
    precision = settings.precision
    if settings.optimizer == "nanogpt":
        with contextlib.redirect_stdout(sys.stderr):
            opt = raw.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
        fused = any(g.get("fused") for g in opt.param_groups)
        opt_note = f"configure_optimizers: AdamW(fused={fused})"
    else:
        opt, opt_note = _optimizer(settings.optimizer, raw, preset, device), "build_optimizer"
    model = _maybe_compile(raw, settings)
    from lumenlm.train.precision import autocast, make_scaler

    scaler = make_scaler(precision, device) if device.type == "cuda" else None

    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        y = torch.where(y == IGNORE, -1, y)  # nanoGPT's ignore_index
        with autocast(precision, device):
            _, loss = model(x.to(device), y.to(device))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        step_optimizer(opt, scaler)
        return loss.item()

    @torch.no_grad()
    def evaluate(tokens: torch.Tensor) -> float:
        x, y = _windows(tokens.to(device), shape.batch, shape.context)
        with autocast(precision, device):
            _, loss = model(x, y)
        return loss.item()

    def gen(prompt: torch.Tensor, n: int) -> torch.Tensor:
        prompt = prompt.to(device)
        return raw.generate(prompt, n, top_k=1)[:, prompt.shape[1] :].cpu()

    notes = {"loss": "its own (model(X, Y))", "optimizer": opt_note,
             "dropout": "torch's (nn.Dropout, SDPA dropout_p)"}  # fmt: skip
    if cfg.d_ff != 4 * cfg.d_model:
        notes["mlp"] = f"MLP linears swapped for d_ff {cfg.d_ff} (nanoGPT hard-codes 4 x d)"
    return Runner(train_step, evaluate, gen, raw.train, precision, notes, dropout_setter(raw))
