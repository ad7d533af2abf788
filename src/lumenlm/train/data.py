"""Token windows and the resumable, world-size-independent batch order.

Windows are `lumenlm.data.windows.WindowDataset` over a split read with
`lumenlm.data.tokens`; this module adds only the training batch order.

Batch order is a pure function of (seed, epoch, position): each epoch draws one
permutation of all windows from `numpy.random.default_rng([seed, epoch])`. One
optimizer step consumes the next `batch_size * grad_accum * world_size` windows of
it; micro-step m on rank r takes every `world_size`-th window of the m-th slice,
starting at r. So a 2-rank run with batch b sees exactly the windows a 1-process run
with batch 2b sees, and the sampler state (epoch, position in windows) is the same
at any world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lumenlm.data.tokens import check_ids, load_split, read_meta
from lumenlm.data.windows import PackedDataset, WindowDataset, epoch_permutation
from lumenlm.errors import ConfigError, DataError
from lumenlm.train.stop import TrainingError

if TYPE_CHECKING:
    from lumenlm.config import TrainConfig
    from lumenlm.train.distributed import DistEnv


def open_windows(
    data_dir: str | Path,
    split: str,
    context_length: int,
    stride: int | None,
    doc_aligned: bool = False,
) -> WindowDataset | PackedDataset:
    """Windows over a split: every `stride` tokens, or (`doc_aligned`) one row per
    document start, using the dataset's end-of-text id; a one-line error if the split is
    too short for one window."""
    tokens = load_split(data_dir, split)
    win: WindowDataset | PackedDataset
    if doc_aligned:
        eot_id = read_meta(data_dir).get("eot_id")
        if eot_id is None:
            raise DataError(
                f"{data_dir}/meta.json has no eot_id, so documents cannot be told apart; "
                "train without train.doc_aligned or re-run `lumenlm prepare`"
            )
        win = PackedDataset(tokens, context_length, int(eot_id))
        if win.documents == 0:
            raise DataError(
                f"{split} split of {data_dir} holds no end-of-text token (id {eot_id}), so "
                "there are no documents to align windows to; train without train.doc_aligned"
            )
    else:
        win = WindowDataset(tokens, context_length, stride)
    if len(win) == 0:
        raise DataError(
            f"{split} split of {data_dir} has {len(tokens)} tokens, too short for one window of "
            f"context_length={context_length} (+1 target); use a shorter context_length or more data"
        )
    return win


class StepSampler:
    """Hands out the window indices of each optimizer step; state = (epoch, position).

    `position` counts windows of the epoch already consumed by all ranks together.
    An epoch ends when fewer windows remain than one optimizer step needs (the tail is
    dropped that epoch; the next permutation covers it with high probability).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        micro_batch: int,
        grad_accum: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.seed = n, seed
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def windows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.windows_per_step

    def step_indices(self) -> list[np.ndarray]:
        """This rank's window indices for each micro-step of the next optimizer step."""
        if self._perm_epoch != self.epoch:
            self._perm = epoch_permutation(self.n, self.seed, self.epoch)
            self._perm_epoch = self.epoch
        B, W = self.micro_batch, self.world_size
        out = []
        for m in range(self.grad_accum):
            start = self.position + m * B * W
            out.append(self._perm[start : start + B * W][self.rank :: W])
        return out

    def advance(self) -> bool:
        """Mark one optimizer step consumed; True when that step ended the epoch."""
        self.position += self.windows_per_step
        if self.position + self.windows_per_step > self.n:
            self.epoch += 1
            self.position = 0
            return True
        return False

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ConfigError(
                f"checkpoint batch order was drawn with seed {int(state['seed'])}, not "
                f"{self.seed}; exact resume needs the same seed"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position + self.windows_per_step > self.n:  # e.g. resumed at a larger world size
            self.epoch += 1
            self.position = 0


def eval_indices(n: int, n_batches: int | None, batch_size: int) -> np.ndarray:
    """Fixed validation windows: `n_batches * batch_size` evenly spaced windows (all if None)."""
    want = n if n_batches is None else min(n, n_batches * batch_size)
    return np.unique(np.linspace(0, n - 1, num=want).round().astype(np.int64))


def rank_eval_indices(
    n: int, n_batches: int | None, batch_size: int, rank: int, world: int
) -> np.ndarray:
    """This rank's share of the fixed validation windows: the same global windows at any
    world size (`batch_size` is per rank), a whole number of them per rank."""
    idx = eval_indices(n, n_batches, batch_size * world)
    if world > 1:
        idx = idx[: len(idx) - len(idx) % world]
    if len(idx) == 0:
        raise TrainingError(
            f"val split has fewer windows ({n}) than processes; use fewer processes or more data"
        )
    return idx[rank::world]


class TrainData:
    """What one rank trains and validates on: train and val windows, this rank's batch
    order, and its share of the fixed validation windows."""

    def __init__(
        self, data_dir: Path, context_length: int, vocab_size: int, cfg: TrainConfig, env: DistEnv
    ) -> None:
        self.train = open_windows(data_dir, "train", context_length, cfg.stride, cfg.doc_aligned)
        self.val = open_windows(data_dir, "val", context_length, None)
        for split, windows in (("train", self.train), ("val", self.val)):  # once, cheaply
            check_ids(windows.tokens, vocab_size, f"{data_dir / split}.bin")
        self.data_dir = data_dir
        self.coverage: float = getattr(self.train, "coverage", 1.0)
        """Share of the train tokens the windows cover (below 1 for doc-aligned rows)."""
        tok = data_dir / "tokenizer.json"
        self.tokenizer_path = tok if tok.exists() else None
        rank, world = env.rank, env.world_size
        self.sampler = StepSampler(
            len(self.train), cfg.seed, cfg.batch_size, cfg.grad_accum, rank, world
        )
        if self.sampler.steps_per_epoch == 0:
            raise TrainingError(
                f"train split has {len(self.train)} windows of {context_length} tokens; one "
                f"optimizer step needs {self.sampler.windows_per_step} (batch_size "
                f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} process(es)); "
                "lower batch_size/grad_accum or add data"
            )
        self.val_idx = rank_eval_indices(
            len(self.val), cfg.eval_batches, cfg.batch_size, rank, world
        )
        self.model_extra: dict[str, object] = {}
        """config.json keys the checkpoints carry besides the model (e.g. "chat")."""

    def notice(self) -> str | None:
        """What the user should know about these windows before training, if anything."""
        if self.coverage >= 0.9:
            return None
        return (
            f"document-aligned windows cover {self.coverage:.0%} of the train tokens "
            "(documents longer than the context are cut); drop train.doc_aligned to "
            "train on every token"
        )

    def card(self) -> dict[str, object]:
        """The data section of the model card."""
        return {
            "dir": str(self.data_dir),
            "train_tokens": len(self.train.tokens),
            "val_tokens": len(self.val.tokens),
            "tokenizer": "tokenizer.json" if self.tokenizer_path else None,
        }
