"""What every export shares: where it may write, which tokenizer and card travel with it.

An export never deletes what is not ours (the source model, or an existing path without
`force`), checks the tokenizer before writing anything, and gives every file ordinary
permissions (0666 less the umask, like any file the user creates) so a shared export is
readable by others: temp-file helpers create 0600 files, which a model hub upload or a
server running as another user then cannot read.
"""

from __future__ import annotations

import os
from pathlib import Path

from lumenlm.data.download import sha256_file
from lumenlm.errors import ConfigError, LumenError, first_line
from lumenlm.model import GPT
from lumenlm.modelio import check_tokenizer_fits, tokenizer_fingerprint

CARD_NAMES = ("MODEL_CARD.md", "README.md", "model_card.md")
"""A model directory's card, in order of preference: a reproduced run's MODEL_CARD.md (the
run's card with the reproduction's parts), else README.md (every run and checkpoint)."""
RUN_CARD_CHECKPOINTS = ("best", "last")
"""A run's checkpoints whose export carries the run's card rather than their own."""


def check_out_path(out: Path, model_dir: Path | None, force: bool) -> None:
    """Refuse an `out` that exists (unless `force`) or that is the source model itself."""
    if model_dir is not None and out.exists() and out.resolve() == Path(model_dir).resolve():
        raise ConfigError(f"--out {out} is the model's own directory; choose another path")
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() and not force:
        raise ConfigError(f"--out {out} already exists; choose a new path or pass --force")


def model_card(model: GPT) -> str | None:
    """The model card of the directory `model` was loaded from, or of its run.

    A run's `best` or `last` checkpoint (what loading the run gives) carries the run's
    own README.md, the newest and fullest card of the run (its loss curve, and any
    evaluation written into it since); any other model dir its README.md (or
    model_card.md), a run's other checkpoints falling back to the run's card.
    """
    d = model.model_dir
    if d is None:
        return None
    own = [d / name for name in CARD_NAMES]
    run = [d.parent.parent / name for name in CARD_NAMES] if d.parent.name == "checkpoints" else []
    for path in (run + own) if d.name in RUN_CARD_CHECKPOINTS else (own + run):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def default_tokenizer(model: GPT, tokenizer_path: str | Path | None) -> Path | None:
    """`tokenizer_path`, else the tokenizer.json the model was loaded with, else None."""
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    if model.model_dir is not None and (model.model_dir / "tokenizer.json").is_file():
        return model.model_dir / "tokenizer.json"
    return None


def check_tokenizer(path: Path, model: GPT) -> None:
    """The exported tokenizer must be readable and fit the model's vocabulary, as
    `modelio.load` requires of a model directory's own (`check_tokenizer_fits`)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise LumenError(f"--tokenizer {path}: no such file; give a tokenizer.json")
    try:
        size = Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise LumenError(
            f"--tokenizer {path}: not a valid tokenizer.json ({first_line(exc)})"
        ) from None
    saved_with = tokenizer_fingerprint(model) == sha256_file(path)
    check_tokenizer_fits(size, model.config.vocab_size, path, saved_with)


def ordinary_permissions(path: Path) -> None:
    """chmod `path` (a file, or every file and folder under it) to 0666/0777 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
