"""Configuration dataclasses: the model architecture and the training recipe.

One `ModelConfig` expresses all three seed architectures (GPT-2 style Librarian,
RMSNorm/SwiGLU Lumiere, Llama-style LumenBase) by switches rather than subclasses.
Configs round-trip through JSON and YAML; unknown keys and impossible values raise
`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from lumenlm.errors import ConfigError, first_line

Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "gelu_tanh", "swiglu"]
Positions = Literal["learned", "rope"]
Init = Literal["gpt2", "normal"]

T = TypeVar("T")


def _check_choice(name: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


_SCALARS: dict[str, Any] = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _check_types(config: Any, prefix: str = "") -> None:
    """Reject values of the wrong scalar type (JSON/YAML can carry "64" where 64 belongs)
    with a one-line error, before any arithmetic on them fails obscurely."""
    for f in fields(config):
        value = getattr(config, f.name)
        name = str(f.type).split(" | ")[0]
        expected = _SCALARS.get(name)
        if value is None or expected is None:
            continue
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise ConfigError(f"{prefix}{f.name} must be {name}, got {value!r}")


@dataclass
class ModelConfig:
    """Architecture of a decoder-only Transformer.

    Per-head key/query width `d_head` and value width `d_value` default to
    `d_model // n_heads` but may differ (the Lumiere card uses explicit d_key/d_value).
    `n_kv_heads` < `n_heads` gives grouped-query attention (1 = multi-query).
    """

    vocab_size: int = 50304
    context_length: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_value: int | None = None
    d_ff: int = 3072
    norm: Norm = "layernorm"
    norm_bias: bool = True
    norm_eps: float = 1e-5
    activation: Activation = "gelu"
    positions: Positions = "learned"
    rope_theta: float = 10000.0
    attn_bias: bool = True
    mlp_bias: bool = True
    lm_head_bias: bool = False
    tie_embeddings: bool = True
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    pre_norm: bool = True
    init: Init = "gpt2"
    init_std: float = 0.02
    ignore_index: int = -100

    def __post_init__(self) -> None:
        _check_types(self)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_head is None and self.n_heads > 0 and self.d_model % self.n_heads == 0:
            self.d_head = self.d_model // self.n_heads
        if self.d_value is None:
            self.d_value = self.d_head
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that is impossible."""
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_head is None:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "choose n_heads that divides d_model or set d_head explicitly"
            )
        for name in ("n_kv_heads", "d_head", "d_value"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        assert self.n_kv_heads is not None
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(GQA shares each KV head among a whole group of query heads)"
            )
        _check_choice("norm", self.norm, Norm)
        _check_choice("activation", self.activation, Activation)
        _check_choice("positions", self.positions, Positions)
        _check_choice("init", self.init, Init)
        if self.positions == "rope" and self.d_head % 2 != 0:
            raise ConfigError(f"RoPE needs an even d_head, got d_head={self.d_head}")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if not (0 < self.norm_eps < 1):
            raise ConfigError(f"norm_eps must be in (0, 1), got {self.norm_eps}")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.init_std <= 0 or not math.isfinite(self.init_std):
            raise ConfigError(f"init_std must be positive, got {self.init_std}")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head."""
        assert self.n_kv_heads is not None
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with `changes`, re-deriving dependent widths.

        Fields that were derived (d_head = d_model / n_heads, d_value = d_head,
        n_kv_heads = n_heads) follow their sources unless set explicitly, so
        `cfg.replace(d_model=256)` does not keep a stale d_head.
        """
        assert self.n_heads > 0
        if ("d_model" in changes or "n_heads" in changes) and "d_head" not in changes:
            if self.d_head == self.d_model // self.n_heads:
                changes["d_head"] = None
        if "d_head" in changes and "d_value" not in changes and self.d_value == self.d_head:
            changes["d_value"] = None
        if "n_heads" in changes and "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            changes["n_kv_heads"] = None
        return from_dict(ModelConfig, {**self.to_dict(), **changes})

    def with_dropout(self, p: float) -> ModelConfig:
        """A copy with all three dropout rates set to `p`."""
        return dataclasses.replace(self, embd_dropout=p, attn_dropout=p, resid_dropout=p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)


@dataclass
class TrainConfig:
    """A training recipe: optimizer, schedule, batch, precision, stopping.

    `batch_size` is per optimizer micro-step on one process; the effective batch is
    `batch_size * grad_accum * world_size` windows of `context_length` tokens.
    """

    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    max_epochs: int = 1
    max_steps: int | None = None
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    stride: int | None = None
    # Start training windows only at document boundaries (the end-of-text token before a
    # document; non-overlapping rows, data.windows.PackedDataset) instead of every
    # `stride` tokens. Text of a document past one context length is then not trained on.
    doc_aligned: bool = False
    eval_interval: int = 200
    eval_batches: int | None = 50
    eval_each_epoch: bool = True
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 1e-4
    # "eval": patience counts every evaluation; "epoch": only end-of-epoch evaluations.
    early_stopping_on: Literal["eval", "epoch"] = "eval"
    checkpoint_interval: int = 1000
    checkpoint_each_epoch: bool = True
    keep_checkpoints: int = 3
    log_interval: int = 10
    seed: int = 1337
    compile: bool = False
    # On CUDA, fp32 matmuls use TensorFloat-32 tensor cores (faster, ~1e-3 relative error).
    tf32: bool = True
    # Distributed strategy under torchrun: replicate (DDP) or shard (FSDP2 fully_shard).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Peak accelerator FLOP/s in TFLOPs for the MFU estimate; None = guess on CUDA, no MFU on CPU.
    peak_tflops: float | None = None
    tensorboard: bool = False

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_epochs", "eval_interval", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.stride is not None and self.stride <= 0:
            raise ConfigError(f"train.stride must be a positive integer, got {self.stride}")
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
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            raise ConfigError(
                f"train.early_stopping_patience must be positive or null, got {self.early_stopping_patience}"
            )
        if self.eval_batches is not None and self.eval_batches <= 0:
            raise ConfigError(
                f"train.eval_batches must be positive or null, got {self.eval_batches}"
            )
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        _check_choice("train.schedule", self.schedule, Literal["cosine", "constant", "linear"])
        _check_choice("train.precision", self.precision, Literal["fp32", "bf16", "fp16", "auto"])
        _check_choice("train.early_stopping_on", self.early_stopping_on, Literal["eval", "epoch"])
        _check_choice("train.strategy", self.strategy, Literal["ddp", "fsdp"])

    def __post_init__(self) -> None:
        _check_types(self, "train.")
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


@dataclass
class Preset:
    """A named architecture plus the training recipe from its model card."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: str | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a clear error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__}: {exc}") from None


def save_config(config: Any, path: str | Path) -> None:
    """Write a dataclass config as JSON or YAML (by file extension)."""
    path = Path(path)
    data = dataclasses.asdict(config)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping, with a one-line error naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({first})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path) -> T:
    """Load dataclass `cls` from a JSON/YAML file."""
    try:
        return from_dict(cls, read_mapping(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def parse_value(text: str) -> Any:
    """Parse a `--set key=value` value: JSON/YAML scalars (numbers like `2e-4` included,
    which YAML 1.1 would leave as strings), else the raw string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass `config` with `overrides` applied and validated."""
    names = {f.name for f in fields(config)}  # type: ignore[arg-type]
    for key in overrides:
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix}{key!r}; known keys: {', '.join(sorted(names))}"
            )
    if isinstance(config, ModelConfig):
        return config.replace(**overrides)  # type: ignore[return-value]
    data = dataclasses.asdict(config)  # type: ignore[call-overload]
    data.update(overrides)
    return from_dict(type(config), data)
