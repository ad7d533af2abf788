"""Save and load model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`).

Weights are stored with safetensors only, so loading never unpickles anything.
Every write goes to a temporary file first and is renamed into place, so a crash
never leaves a half-written model. Every failure to load names the file.

`load(path)` accepts a model directory or a run directory (then it loads the
run's best checkpoint, falling back to the last one). A bit-flipped weight file still
parses and gives plausible numbers, so when the directory has a `manifest.json` (every
training checkpoint does) `load` first checks the sha256 of the files it reads; this is
the one implementation of manifest writing and checking (`write_manifest`,
`verify_manifest`), shared with training's resume. It also refuses a tokenizer.json
that does not fit the model (another vocabulary size, or not the file the model was
saved with): such a pair only fails later, or silently, when text is generated.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumenlm.config import ModelConfig
from lumenlm.data.download import sha256_file
from lumenlm.devices import warn_slow_bf16
from lumenlm.errors import CheckpointError, ConfigError, first_line
from lumenlm.model import GPT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT = "lumenlm"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
MANIFEST_NAME = "manifest.json"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME)
"""The files `load` reads, so the ones it verifies."""
TOKENIZER_SHA256 = "tokenizer_sha256"
"""config.json key: sha256 of the tokenizer.json saved with the model (its fingerprint)."""
VERIFY_HINT = (
    "use an intact copy (e.g. another checkpoint of the run), or pass --no-verify "
    "(verify=False) to load it anyway"
)


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

    With a tokenizer, config.json records its sha256 as `tokenizer_sha256` (the model's
    tokenizer fingerprint). `extra` is stored in config.json next to the model config
    (e.g. a chat template, training provenance). Returns the directory.
    """
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner = unwrap_model(model)
    cfg: ModelConfig = inner.config  # type: ignore[assignment]
    atomic_write_bytes(
        out / WEIGHTS_NAME, st_save(model_state_dict(inner), metadata={"format": "pt"})
    )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
    }
    if tokenizer_path is not None:
        if Path(tokenizer_path).resolve() != (out / TOKENIZER_NAME).resolve():
            atomic_write_bytes(out / TOKENIZER_NAME, Path(tokenizer_path).read_bytes())
        # the fingerprint eval compares with a dataset's meta.json["tokenizer"]["sha256"]
        doc[TOKENIZER_SHA256] = sha256_file(out / TOKENIZER_NAME)
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
        raise CheckpointError(
            f"{p}: no such model or run directory; give a run folder (`lumenlm runs`) or a "
            "model folder with config.json"
        )
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
    verify: bool = True,
) -> GPT:
    """Load a model from a model dir or a run dir, in eval mode.

    With `verify` (the default), a directory with a `manifest.json` must match it: the
    sha256 of config.json, model.safetensors and tokenizer.json (without a manifest
    there is nothing to check), and a tokenizer.json must be the one config.json's
    `tokenizer_sha256` records. Either way a tokenizer must fit the model's `vocab_size`
    (see `check_tokenizer_fits`). Sets the model's `tokenizer` (the directory's
    tokenizer.json, if any), `meta` (the whole config.json document) and `model_dir`
    (the resolved directory).
    """
    model_dir = resolve_model_dir(path)
    cfg, doc = read_model_config(model_dir)
    if verify:
        _verified(verify_manifest, model_dir, MODEL_FILES, (CONFIG_NAME, WEIGHTS_NAME))
    tokenizer = _read_tokenizer(model_dir / TOKENIZER_NAME)
    if tokenizer is not None:
        tok_path = model_dir / TOKENIZER_NAME
        saved_with = doc.get(TOKENIZER_SHA256)
        same = saved_with == sha256_file(tok_path) if isinstance(saved_with, str) else None
        check_tokenizer_fits(tokenizer.get_vocab_size(), cfg.vocab_size, tok_path, bool(same))
        if verify and same is False:
            raise CheckpointError(
                f"{tok_path}: not the tokenizer this model was saved with (its sha256 differs "
                f"from {TOKENIZER_SHA256} in {CONFIG_NAME}); {VERIFY_HINT}"
            )
    model = GPT(cfg)
    load_state_into(model, model_dir / WEIGHTS_NAME)
    model.tokenizer = tokenizer
    model.meta = doc
    model.model_dir = model_dir
    if dtype == torch.bfloat16:
        warn_slow_bf16(device, "--dtype bf16")
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model


def check_tokenizer_fits(n_tokens: int, vocab_size: int, path: Path, saved_with: bool) -> None:
    """A tokenizer of `n_tokens` ids must fit a model of `vocab_size` (one-line error).

    More ids than the model has rows fail as soon as one is encoded. Fewer ids than rows
    is padding only when this very tokenizer was saved with the model (`saved_with`: its
    sha256 is config.json's `tokenizer_sha256`; training fixes the vocabulary from the
    data, so the extra rows never learned to be predicted); any other smaller tokenizer
    cannot decode ids the model was trained to emit, and generation prints nothing.
    """
    if n_tokens == vocab_size or (n_tokens < vocab_size and saved_with):
        return
    raise CheckpointError(
        f"{path}: {n_tokens} tokens, but the model's vocab_size is {vocab_size}; use the "
        "tokenizer.json the model was trained with"
    )


def _verified(check: Callable[..., object], *args: Any) -> None:
    """Run a verification step; its CheckpointError gains what to do about it."""
    try:
        check(*args)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {VERIFY_HINT}") from None


def tokenizer_fingerprint(model: GPT) -> str | None:
    """sha256 of the tokenizer.json a loaded model was saved with: the one config.json
    records, else (model dirs from before the record) the file's digest, else None."""
    recorded = model.meta.get(TOKENIZER_SHA256)
    if isinstance(recorded, str):
        return recorded
    if model.model_dir is not None and (model.model_dir / TOKENIZER_NAME).is_file():
        return sha256_file(model.model_dir / TOKENIZER_NAME)
    return None


# -- manifests ---------------------------------------------------------------------


def write_manifest(directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `manifest.json`: {"files": {name: sha256} of every file in `directory`
    (the manifest itself excepted), **extra}. Write it last: it seals the directory."""
    d = Path(directory)
    names = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    doc = {"files": {name: sha256_file(d / name) for name in names}, **(extra or {})}
    path = d / MANIFEST_NAME
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict[str, str] | None:
    """The `files` map of `directory`'s manifest.json (None when it has none)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt manifest") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and Path(k).name == k != ".." and isinstance(v, str)
        for k, v in files.items()
    ):
        raise CheckpointError(f"{path}: corrupt manifest")
    return files


def verify_manifest(
    directory: str | Path,
    names: Iterable[str] | None = None,
    required: Iterable[str] = (),
) -> bool:
    """Check files of `directory` against the sha256 in its manifest.json.

    `names`: the files to check (default: every file the manifest lists); each one that
    exists or is listed must be listed and match. `required`: names the manifest must
    list. Returns False when there is no manifest (nothing to check); raises
    CheckpointError naming the file otherwise.
    """
    d = Path(directory)
    files = read_manifest(d)
    if files is None:
        return False
    for name in required:
        if name not in files:
            raise CheckpointError(f"{d}: manifest does not list {name}")
    check = list(files) if names is None else [n for n in names if n in files or (d / n).exists()]
    for name in check:
        f = d / name
        if name not in files:
            raise CheckpointError(f"{f}: not listed in {MANIFEST_NAME} (added afterwards?)")
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if sha256_file(f) != files[name]:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt or modified)")
    return True


# -- output paths ------------------------------------------------------------------


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Fail before long work when `path` cannot be written later: it must not be a
    directory, and its folder (or the nearest existing one above) must be writable."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory; give a file name, e.g. {p / 'out.json'}")
    _probe_writable(p.parent, p, what)
    return p


def check_output_dir(path: str | Path, what: str = "output") -> Path:
    """Fail before long work when directory `path` cannot be created or written in."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} exists and is not a directory; choose another path")
    _probe_writable(p, p, what)
    return p


def _probe_writable(folder: Path, target: Path, what: str) -> None:
    """Create and remove a temp file in `folder` or its nearest existing ancestor (a real
    try: permission bits do not tell for root or a read-only filesystem)."""
    here = folder.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ConfigError(f"{what} {target}: {here} is not a directory; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lumenlm-probe.", dir=here)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{what} {target}: cannot write in {here} ({reason}); choose a writable place"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def _read_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizers.Tokenizer in `path`, or None when the file is absent."""
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load tokenizer ({first_line(exc)})") from None
