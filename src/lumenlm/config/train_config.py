"""The training recipe: one `TrainConfig` for optimizer, schedule, batch, precision, stopping.

A preset carries its model card's recipe as a `TrainConfig`, a run saves it in its
config.json, and `--set` changes it field by field. Each field carries an attribute
docstring (read by `lumenlm.config.docs` for `presets --show` and `--help`); a new field
needs one, or the tests fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lumenlm.config.choices import (
    EarlyStoppingOn,
    OptimizerName,
    Precision,
    Schedule,
    Strategy,
    check_choice,
)
from lumenlm.config.mapping import check_types
from lumenlm.errors import ConfigError


@dataclass
class TrainConfig:
    """A training recipe: optimizer, schedule, batch, precision, stopping.

    `batch_size` is per optimizer micro-step on one process; the effective batch is
    `batch_size * grad_accum * world_size` windows of `context_length` tokens.
    """

    batch_size: int = 32
    """Windows per micro-batch on one process. One optimizer step takes
    batch_size * grad_accum * world_size windows; evaluation runs in batches of it too."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before each optimizer step: a larger
    effective batch without more memory."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup; the schedule then decays it."""
    min_lr_ratio: float = 0.1
    """Decay floor as a fraction of lr: cosine and linear reach lr * min_lr_ratio at the
    last planned step and stay there; in [0, 1]. Unused by the constant schedule."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices and embeddings only (not to
    biases or norm gains)."""
    beta1: float = 0.9
    """AdamW decay rate of the gradient moving average (momentum)."""
    beta2: float = 0.95
    """AdamW decay rate of the squared-gradient moving average."""
    eps: float = 1e-8
    """AdamW epsilon, added to the denominator of each update for numerical stability."""
    optimizer: OptimizerName = "adamw"
    """adamw: AdamW on every parameter. muon: Muon (momentum, then the update
    orthogonalized by Newton-Schulz iterations) on the 2-D weight matrices inside the
    blocks, AdamW (lr, betas, eps, weight_decay above) on embeddings, the output head,
    norms and biases, as nanochat and modded-nanogpt train. Not with fp16 or FSDP."""
    muon_lr: float = 0.02
    """muon only: the peak learning rate of the Muon matrices; the schedule scales it as
    it scales lr (warmup, decay)."""
    muon_momentum: float = 0.95
    """muon only: Nesterov momentum of the Muon matrices, in [0, 1)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from lr / warmup_steps up to lr; 0 starts at lr."""
    schedule: Schedule = "cosine"
    """Learning-rate shape after warmup: cosine or linear decay to the floor
    (min_lr_ratio) at the last planned step, constant at lr, or wsd
    (warmup-stable-decay): constant at lr, then a linear decay to the floor over the
    last decay_fraction of the run."""
    decay_fraction: float = 0.2
    """wsd only: the share of the run spent decaying, in (0, 1]. With --max-minutes the
    decay starts once 1 - decay_fraction of the time is spent and is sized from the
    measured step rate to end when the time does (the run then finishes); without, it
    is the last decay_fraction of the planned steps after warmup."""
    max_epochs: int = 1
    """Passes over the training windows, when max_steps is None: the run then plans
    max_epochs * steps-per-epoch steps. Ignored when max_steps is set."""
    max_steps: int | None = None
    """Schedule length: the optimizer steps the run plans and trains for, where the decay
    reaches its floor. None = max_epochs * steps per epoch. (`lumenlm train --stop-at-step`
    only pauses a run early and leaves the schedule as planned.)"""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value before each optimizer step; 0 disables
    clipping (the norm is still logged)."""
    precision: Precision = "auto"
    """Numeric precision of training: fp32, bf16 or fp16 autocast (fp16 with a gradient
    scaler), or auto: bf16 on CUDA GPUs with native bf16, else fp16 on CUDA, fp32 on
    CPU and MPS."""
    stride: int | None = None
    """Start a training window every stride tokens; below context_length the windows
    overlap (more, correlated windows per epoch). None = context_length (no overlap).
    Validation windows never overlap. Excludes doc_aligned."""
    doc_aligned: bool = False
    """Start training windows only at document boundaries (the end-of-text token before a
    document), without overlap, instead of every stride tokens. Text of a document past
    one context length is then not trained on. Needs a dataset with an end-of-text id;
    excludes stride."""
    eval_interval: int = 200
    """Evaluate the validation loss every this many optimizer steps. Each evaluation also
    saves checkpoints/last (and best, when the loss improved)."""
    eval_batches: int | None = 50
    """Validation batches per evaluation (batch_size windows per process each), the same
    evenly spaced windows every time. None = the whole validation split."""
    eval_each_epoch: bool = True
    """Also evaluate at the end of every epoch."""
    early_stopping_patience: int | None = None
    """Stop after this many counted evaluations in a row without improvement (see
    early_stopping_on). None = never stop early."""
    early_stopping_min_delta: float = 1e-4
    """How far the validation loss must fall below the best so far to count as an
    improvement, for early stopping and for choosing checkpoints/best."""
    early_stopping_on: EarlyStoppingOn = "eval"
    """Which evaluations count toward patience: eval (every one) or epoch (only those at
    the end of an epoch, so patience is in epochs)."""
    checkpoint_interval: int = 1000
    """Save a periodic checkpoints/step_<N> every this many optimizer steps
    (checkpoints/last is rewritten at every save)."""
    checkpoint_each_epoch: bool = True
    """Also save a periodic step_<N> checkpoint at the end of every epoch."""
    keep_checkpoints: int = 3
    """Periodic step_<N> checkpoints to keep, the newest; last and best are never pruned."""
    log_interval: int = 10
    """Write a training record (loss, lr, gradient norm, tokens/s, MFU) to metrics.jsonl
    every this many optimizer steps, and at the first and last step."""
    seed: int = 1337
    """Seeds the initial weights, every epoch's batch order and (with the rank added)
    dropout. Resuming a run needs the same seed."""
    compile: bool = False
    """Run the model under torch.compile (after DDP/FSDP wrapping): a slower start (a
    cold compile of 3-72 s for the seed presets on a 2-core CPU), for faster steps where
    ops, not matmuls, dominate. Off by default: on CPU the seed presets' steps ran
    0.92-1.08x compiled, since their matmuls dominate and inductor calls the same BLAS
    (benchmarks/bench_compile.py); a GPU gains more."""
    tf32: bool = True
    """On CUDA, let fp32 matmuls use TensorFloat-32 tensor cores (faster, about 1e-3
    relative error); false keeps full fp32. No effect on other devices."""
    strategy: Strategy = "ddp"
    """Multi-process strategy under torchrun: ddp (every process holds the whole model;
    gradients are averaged) or fsdp (FSDP2, parameters, gradients and optimizer state
    sharded per block). No effect in one process."""
    peak_tflops: float | None = None
    """Peak FLOP/s of one accelerator in TFLOPs, for the MFU in the metrics. None = guess
    from the CUDA GPU's name (bf16/fp16 rate, TF32 rate for fp32); no MFU on CPU."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN/tensorboard (needs the tensorboard
    package; skipped with a notice without it)."""

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that is impossible."""
        for name in ("batch_size", "grad_accum", "max_epochs", "eval_interval", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"train.{name} must be a positive integer, got {value!r}; set a value >= 1"
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.stride is not None and self.stride <= 0:
            raise ConfigError(
                f"train.stride must be a positive integer, got {self.stride}; set a value >= 1"
            )
        if self.stride is not None and self.doc_aligned:
            raise ConfigError(
                "train.stride and train.doc_aligned exclude each other (document-aligned "
                "windows start at document boundaries); set one of them"
            )
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"train.max_steps must be positive, got {self.max_steps}")
        for name in ("checkpoint_interval", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"train.{name} must be a positive integer, got {value!r}; set a value >= 1"
                )
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            raise ConfigError(
                f"train.early_stopping_patience must be positive or null, got {self.early_stopping_patience}"
            )
        if self.eval_batches is not None and self.eval_batches <= 0:
            raise ConfigError(
                f"train.eval_batches must be positive or null, got {self.eval_batches}"
            )
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ConfigError(
                f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}; use e.g. 0.1"
            )
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if not (0.0 < self.decay_fraction <= 1.0):
            raise ConfigError(
                f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}; use e.g. 0.2"
            )
        check_choice("train.schedule", self.schedule, Schedule)
        check_choice("train.precision", self.precision, Precision)
        check_choice("train.early_stopping_on", self.early_stopping_on, EarlyStoppingOn)
        check_choice("train.strategy", self.strategy, Strategy)
        check_choice("train.optimizer", self.optimizer, OptimizerName)
        if not self.muon_lr > 0:
            raise ConfigError(f"train.muon_lr must be > 0, got {self.muon_lr}; use e.g. 0.02")
        if not (0.0 <= self.muon_momentum < 1.0):
            raise ConfigError(
                f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}; use e.g. 0.95"
            )
        if self.optimizer == "muon" and self.precision == "fp16":
            raise ConfigError(
                "train.optimizer=muon does not run with fp16 gradient scaling; "
                "use --precision bf16 or fp32"
            )
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise ConfigError(
                "train.optimizer=muon needs whole matrices, which FSDP shards; "
                "use --strategy ddp or optimizer=adamw"
            )

    def __post_init__(self) -> None:
        check_types(self, "train.")
        self.validate()

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> TrainConfig:
        """A run's saved `train` section, also from runs written by earlier versions:
        `num_workers` (which never had an effect) is dropped, and a run saved before
        `tf32` existed keeps training in full fp32 matmul precision."""
        d = dict(d)
        d.pop("num_workers", None)
        d.setdefault("tf32", False)
        return cls(**d)
