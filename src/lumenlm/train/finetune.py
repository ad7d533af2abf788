"""Starting a run from existing weights: fine-tuning (`lumenlm finetune`) and continued
pretraining (`lumenlm train --init-from`).

Both open a base model (a run, a model directory or an import; checksums verified) and
hand its weights to the ordinary `Trainer` as `init_state`, with a fresh schedule. This
module holds what differs from a run from scratch: the base's provenance for the card,
the recipe defaults of fine-tuning, the template and its special tokens (the vocabulary
grows, `train.vocab`), and the check that a prepared dataset was encoded with the base's
own tokenizer (by fingerprint, as `eval` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.config.overrides import apply_overrides
from lumenlm.data.chat_template import ChatTemplate, get_template
from lumenlm.data.download import sha256_file
from lumenlm.data.tokenizer import PAD
from lumenlm.errors import ConfigError, DataError
from lumenlm.model import GPT
from lumenlm.modelio import TOKENIZER_NAME, WEIGHTS_NAME, load, tokenizer_fingerprint
from lumenlm.train.vocab import add_special_tokens, grow_state

FINETUNE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "warmup_steps": 10,
    "max_epochs": 3,
    "batch_size": 8,
    "eval_batches": None,
    "eval_interval": 50,
    "checkpoint_interval": 200,
    "log_interval": 10,
}
"""Fine-tuning's recipe where the pretraining defaults do not fit (a lower lr, a short
warmup, a few epochs over all of a small data set, every validation row). `--set`
overrides any of them."""

DROPOUT_KEYS = ("dropout", "embd_dropout", "attn_dropout", "resid_dropout")
"""The only model keys a run from existing weights may change (its shapes are fixed)."""


@dataclass
class Base:
    """The starting weights: the loaded model and where it came from."""

    model: GPT
    dir: Path
    sha256: str

    @property
    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.dir), "sha256": self.sha256}


def open_base(path: str | Path, *, need_tokenizer: bool) -> Base:
    """Load the base model on CPU (checksums verified); a one-line DataError when a
    tokenizer is needed and the directory has none."""
    model = load(path)
    assert model.model_dir is not None
    if need_tokenizer and model.tokenizer is None:
        raise DataError(
            f"{model.model_dir}: no {TOKENIZER_NAME}, so text cannot be tokenized the way the "
            "model was trained; give a model or run directory saved with its tokenizer"
        )
    return Base(model, model.model_dir, sha256_file(model.model_dir / WEIGHTS_NAME))


def check_model_overrides(model_over: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """Only dropout may change on existing weights; a one-line ConfigError otherwise."""
    bad = sorted(k for k in model_over if k not in DROPOUT_KEYS)
    if bad:
        raise ConfigError(
            f"model.{bad[0]} cannot change: the architecture comes from {base}; drop --set "
            f"model.{bad[0]} (only dropout may change)"
        )
    return model_over


def with_dropout(cfg: ModelConfig, model_over: dict[str, Any]) -> ModelConfig:
    over = dict(model_over)
    if "dropout" in over:
        p = over.pop("dropout")
        for name in DROPOUT_KEYS[1:]:
            over.setdefault(name, p)
    return apply_overrides(cfg, over, prefix="model.") if over else cfg


def finetune_config(train_over: dict[str, Any]) -> TrainConfig:
    """The fine-tuning recipe: `FINETUNE_DEFAULTS` over the train defaults, then `--set`."""
    return apply_overrides(TrainConfig(), {**FINETUNE_DEFAULTS, **train_over}, prefix="train.")


def pick_template(name: str | None, base: Base) -> tuple[ChatTemplate, str]:
    """(template, its name for the card): `--template NAME`, else the base model's own
    (config.json "chat"), else the default; refused if fine-tuning cannot use it."""
    if name is not None:
        tpl, label = get_template(name), name
    else:
        try:
            tpl = ChatTemplate.from_meta(base.model.meta)
        except ValueError as exc:
            raise ConfigError(f"{base.dir}/config.json: {exc}; fix it or pass --template") from None
        label = "the base model's" if base.model.meta.get("chat") else "plain"
    tpl.check(name or f"{base.dir}/config.json")
    return tpl, label


def grown_start(
    base: Base, template: ChatTemplate
) -> tuple[dict[str, torch.Tensor], ModelConfig, Any, list[str]]:
    """(weights, config, tokenizer, added tokens) with the template's special tokens: a
    copy of the base tokenizer gains the missing ones, and the embedding (and an untied
    head) grows by mean-initialised rows (`train.vocab`)."""
    from tokenizers import Tokenizer

    assert base.model.tokenizer is not None
    tok = Tokenizer.from_str(base.model.tokenizer.to_str())
    old_n = tok.get_vocab_size()
    added = add_special_tokens(tok, template.special_tokens)
    new_ids = [int(tok.token_to_id(t)) for t in added]
    state = {k: v.detach().cpu() for k, v in base.model.state_dict().items()}
    state, cfg = grow_state(state, base.model.config, new_ids, tok.get_vocab_size(), old_n)
    return state, cfg, tok, added


def pad_id_of(tokenizer: Any) -> int:
    """The id packing pads rows with (never a target): `<|pad|>`, else 0."""
    i = tokenizer.token_to_id(PAD)
    return int(i) if i is not None else 0


def check_dataset_tokenizer(base: Base, meta: dict[str, Any], data_dir: Path) -> None:
    """A prepared dataset must be encoded with the base model's tokenizer (same sha256)."""
    ours = tokenizer_fingerprint(base.model)
    tok = meta.get("tokenizer")
    theirs = tok.get("sha256") if isinstance(tok, dict) else None
    if theirs is None and (data_dir / TOKENIZER_NAME).is_file():
        theirs = sha256_file(data_dir / TOKENIZER_NAME)
    hint = f"prepare it with `lumenlm prepare ... --tokenizer {base.dir / TOKENIZER_NAME}`"
    if ours is None:
        raise DataError(
            f"{base.dir}: no {TOKENIZER_NAME}, so {data_dir} cannot be checked against the "
            f"model's tokenizer; give a model directory saved with its tokenizer"
        )
    if theirs != ours:
        raise DataError(
            f"{data_dir} was not encoded with the tokenizer of {base.dir} (tokenizer sha256 "
            f"differs); {hint}"
        )
