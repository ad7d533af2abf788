"""Save and load model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`).

Weights are stored with safetensors only, so loading never unpickles anything.
Every write goes to a temporary file first and is renamed into place, so a crash
never leaves a half-written model. Every failure to load names the file.

`load(path)` accepts a model directory or a run directory (then it loads the
run's best checkpoint, falling back to the last one).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumenlm.config import ModelConfig
from lumenlm.errors import CheckpointError, ConfigError, first_line
from lumenlm.model import GPT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT = "lumenlm"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(target: Path) -> Path:
    """A fresh temp dir beside `target` (same filesystem, so renaming is atomic),
    with normal permissions (mkdtemp's are 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG, atomically (a reader never sees half a file)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the tied `lm_head.weight` (safetensors refuses shared storage),
    without `_orig_mod.` (torch.compile) or `module.` (DDP) prefixes, contiguous, on CPU."""
    inner = unwrap_model(model)
    state = inner.state_dict()
    if getattr(inner, "config", None) is not None and inner.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip torch.compile / DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module  # type: ignore[assignment]
        else:
            return model


def save_model(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory: config.json, model.safetensors, optional tokenizer.json.

    `extra` is stored in config.json next to the model config (e.g. a chat template,
    training provenance). Returns the directory.
    """
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner = unwrap_model(model)
    cfg: ModelConfig = inner.config  # type: ignore[assignment]
    atomic_write_bytes(
        out / WEIGHTS_NAME, st_save(model_state_dict(inner), metadata={"format": "pt"})
    )
    if (
        tokenizer_path is not None
        and Path(tokenizer_path).resolve() != (out / TOKENIZER_NAME).resolve()
    ):
        atomic_write_bytes(out / TOKENIZER_NAME, Path(tokenizer_path).read_bytes())
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
    }
    if extra:
        doc.update(extra)
    # config.json last: a directory with a config.json is complete.
    atomic_write_text(out / CONFIG_NAME, json.dumps(doc, indent=2) + "\n")
    return out


def read_model_config(model_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Read config.json of a model dir -> (ModelConfig, the whole document)."""
    path = Path(model_dir) / CONFIG_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found; is {model_dir} a lumenlm model directory?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "model" not in doc:
        raise CheckpointError(f"{path}: not a lumenlm model config (missing format/model keys)")
    try:
        cfg = ModelConfig.from_dict(doc["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return cfg, doc


def resolve_model_dir(path: str | Path) -> Path:
    """A run dir's best (else last) checkpoint, or a model dir itself.

    A run dir is recognised by its `checkpoints/` folder first: its own
    config.json is the run's resolved config, not a model.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such model or run directory")
    for name in ("best", "last"):
        cand = p / "checkpoints" / name
        if (cand / CONFIG_NAME).exists():
            return cand
    if (p / CONFIG_NAME).exists() and (p / WEIGHTS_NAME).exists():
        return p
    if (p / "checkpoints").is_dir():
        raise CheckpointError(
            f"{p}: run directory has no complete checkpoint yet (checkpoints/best or checkpoints/last)"
        )
    if (p / CONFIG_NAME).exists():
        raise CheckpointError(f"{p / WEIGHTS_NAME}: not found")
    raise CheckpointError(
        f"{p}: neither a model directory (no {CONFIG_NAME}) nor a run directory with checkpoints/best or checkpoints/last"
    )


def load_state_into(model: GPT, weights_path: Path) -> None:
    """Load a safetensors file into `model`, checking names and shapes strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: not found")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise CheckpointError(
            f"{weights_path}: corrupt or not a safetensors file ({first})"
        ) from None
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}"
            )
        raise CheckpointError(
            f"{weights_path}: weights do not match config.json ({'; '.join(parts)})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> GPT:
    """Load a model from a model dir or a run dir, in eval mode.

    Sets the model's `tokenizer` (the directory's tokenizer.json, if any), `meta` (the
    whole config.json document) and `model_dir` (the resolved directory).
    """
    model_dir = resolve_model_dir(path)
    cfg, doc = read_model_config(model_dir)
    model = GPT(cfg)
    load_state_into(model, model_dir / WEIGHTS_NAME)
    model.tokenizer = _read_tokenizer(model_dir / TOKENIZER_NAME)
    model.meta = doc
    model.model_dir = model_dir
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model


def _read_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizers.Tokenizer in `path`, or None when the file is absent."""
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load tokenizer ({exc})") from None
