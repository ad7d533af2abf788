"""Token windows and the resumable, world-size-independent batch order.

Reads a prepared dataset through `lumenlm.data.tokens` (`read_meta`, `load_split`),
with a minimal fallback reader of the same on-disk contract so training works
while the data package evolves.

Batch order is a pure function of (seed, epoch, position): each epoch draws one
permutation of all windows from `numpy.random.default_rng([seed, epoch])`. One
optimizer step consumes the next `batch_size * grad_accum * world_size` windows of
it; micro-step m on rank r takes every `world_size`-th window of the m-th slice,
starting at r. So a 2-rank run with batch b sees exactly the windows a 1-process run
with batch 2b sees, and the sampler state (epoch, position in windows) is the same
at any world size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumenlm.errors import ConfigError, DataError


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The dataset's meta.json (through the data package when available)."""
    try:
        from lumenlm.data.tokens import read_meta as _read_meta
    except ImportError:
        _read_meta = None
    if _read_meta is not None:
        return _read_meta(data_dir)
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: no such data directory; run `lumenlm prepare` first")
    path = d / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{d}: not a prepared dataset (no meta.json); run `lumenlm prepare`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(meta, dict) or "vocab_size" not in meta or "splits" not in meta:
        raise DataError(f"{path}: not a lumenlm dataset meta.json (missing vocab_size/splits)")
    return meta


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    """Flat token stream of one split as a read-only memmap."""
    try:
        from lumenlm.data.tokens import load_split as _load_split
    except ImportError:
        _load_split = None
    if _load_split is not None:
        return _load_split(data_dir, split)
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path}: missing split {split!r}")
    return np.memmap(path, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r")


@dataclass
class Windows:
    """Fixed-length next-token windows over a token stream: window i starts at i*stride."""

    tokens: np.ndarray
    context_length: int
    stride: int

    def __len__(self) -> int:
        n = len(self.tokens) - 1 - self.context_length
        return 0 if n < 0 else n // self.stride + 1

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (len(indices), context_length)."""
        T = self.context_length
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        rows = np.stack([np.asarray(self.tokens[s : s + T + 1]) for s in starts]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def open_windows(
    data_dir: str | Path, split: str, context_length: int, stride: int | None
) -> Windows:
    """Windows over a split; a one-line error if the split is too short for one window."""
    tokens = load_split(data_dir, split)
    win = Windows(tokens, context_length, stride or context_length)
    if len(win) == 0:
        raise DataError(
            f"{split} split of {data_dir} has {len(tokens)} tokens, too short for one window of "
            f"context_length={context_length} (+1 target); use a shorter context_length or more data"
        )
    return win


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of windows in `epoch`: depends on (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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
