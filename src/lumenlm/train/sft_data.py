"""What a fine-tuning run trains and validates on: packed, masked conversation rows.

The same shape as `train.data.TrainData` (train and val datasets with `get_batch`, the
resumable `StepSampler`, the fixed validation indices, the card's data section), so the
pretraining `Trainer` runs it unchanged. Batches are (inputs, targets, document_ids);
targets outside assistant turns are `ignore_index`.

The rows are rebuilt from the JSONL files on every start and resume (rendering and
packing are deterministic), after checking the files still have the sha256 the run
recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.download import sha256_file
from lumenlm.data.sft import SFTSource
from lumenlm.data.sft_pack import PackedRows, pack_conversations
from lumenlm.data.tokens import check_ids
from lumenlm.errors import DataError
from lumenlm.train.data import StepSampler, rank_eval_indices
from lumenlm.train.stop import TrainingError

if TYPE_CHECKING:
    from lumenlm.config import ModelConfig, TrainConfig
    from lumenlm.train.distributed import DistEnv


def check_files(recorded: dict[str, str]) -> None:
    """Refuse to resume when a fine-tuning file changed or went missing (one line)."""
    for path, digest in sorted(recorded.items()):
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: fine-tuning data of this run is gone; restore it to resume")
        if sha256_file(p) != digest:
            raise DataError(
                f"{p} changed since this run started (sha256 differs); resume needs the same data"
            )


class SFTTrainData:
    """Packed train and val rows of a fine-tuning run, and this rank's batch order."""

    def __init__(
        self,
        source: SFTSource,
        template: ChatTemplate,
        tokenizer: Any,
        tokenizer_path: Path,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        env: DistEnv,
        *,
        train_on_prompt: bool = False,
        pad_id: int = 0,
    ) -> None:
        T, ig = model_cfg.context_length, model_cfg.ignore_index
        self.source, self.template = source, template
        self.train_on_prompt = train_on_prompt
        packed: dict[str, PackedRows] = {}
        for split, convs in (("train", source.train), ("val", source.val)):
            rows = pack_conversations(
                convs, template, tokenizer, T, pad_id, ignore_index=ig,
                train_on_prompt=train_on_prompt,
            )  # fmt: skip
            if len(rows) == 0 or rows.stats.trained_tokens == 0:
                raise DataError(
                    f"{split} split: no conversation fits in the context ({T} tokens) with a "
                    "trained token; use shorter conversations or a model with a longer context"
                )
            check_ids(rows.tokens, model_cfg.vocab_size, f"{split} rows")
            packed[split] = rows
        self.train, self.val = packed["train"], packed["val"]
        self.data_dir = Path(next(iter(source.files)))
        self.tokenizer_path: Path | None = tokenizer_path
        self.coverage = 1.0
        self.model_extra: dict[str, object] = {"chat": template.to_dict()}
        rank, world = env.rank, env.world_size
        self.sampler = StepSampler(
            len(self.train), cfg.seed, cfg.batch_size, cfg.grad_accum, rank, world
        )
        if self.sampler.steps_per_epoch == 0:
            raise TrainingError(
                f"fine-tuning data packs into {len(self.train)} rows of {T} tokens; one "
                f"optimizer step needs {self.sampler.windows_per_step} (batch_size "
                f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} process(es)); "
                "lower batch_size/grad_accum or add data"
            )
        self.val_idx = rank_eval_indices(
            len(self.val), cfg.eval_batches, cfg.batch_size, rank, world
        )

    def notice(self) -> str | None:
        """Skipped, cut and dropped conversations, if any (one line)."""
        T = self.train.context_length
        parts = []
        if self.source.skipped_no_assistant:
            parts.append(
                f"{self.source.skipped_no_assistant} conversation(s) without an assistant "
                "turn skipped"
            )
        for split, rows in (("train", self.train), ("val", self.val)):
            if (line := rows.stats.notice(split, T)) is not None:
                parts.append(line)
        return "; ".join(parts) or None

    def card(self) -> dict[str, object]:
        """The data section of the model card."""
        return {
            "dir": ", ".join(self.source.files),
            "train_tokens": self.train.stats.tokens,
            "val_tokens": self.val.stats.tokens,
            "train_trained_tokens": self.train.stats.trained_tokens,
            "val_trained_tokens": self.val.stats.trained_tokens,
            "tokenizer": "tokenizer.json",
        }

    def summary(self) -> dict[str, object]:
        """The fine-tuning record (config.json "finetune" and the card's data section)."""
        t, v = self.train.stats, self.val.stats
        return {
            "files": dict(self.source.files),
            "kinds": dict(self.source.kinds),
            "train_conversations": len(self.source.train),
            "val_conversations": len(self.source.val),
            "skipped_no_assistant": self.source.skipped_no_assistant,
            "truncated": t.truncated + v.truncated,
            "dropped": t.dropped + v.dropped,
            "train_rows": len(self.train),
            "val_rows": len(self.val),
            "train_trained_tokens": t.trained_tokens,
            "val_trained_tokens": v.trained_tokens,
            "train_on_prompt": self.train_on_prompt,
        }
