"""Early stopping: stop after `patience` counted evaluations without an improvement.

Kept apart from the loop so the rule is one small object with its own tests. Its two
numbers (`best`, `bad`) are saved in every checkpoint, so a resumed run stops exactly
where an uninterrupted one would. Which evaluations count (every one, or only those at
an epoch's end: `train.early_stopping_on`) is the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Counts evaluations that do not beat the best by more than `min_delta`."""

    patience: int | None
    """Counted evaluations without improvement before stopping; None never stops."""
    min_delta: float = 0.0
    """An evaluation improves only when it is lower than the best by more than this."""
    best: float | None = None
    """Lowest counted validation loss so far (the reference for improvement)."""
    bad: int = 0
    """Counted evaluations since the last improvement."""

    def update(self, val_loss: float) -> bool:
        """Count one evaluation; True when training should stop now."""
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        """Patience is used up (also true of a resumed run that had stopped early)."""
        return self.patience is not None and self.bad >= self.patience

    @property
    def patience_left(self) -> int | None:
        """Evaluations without improvement still allowed (None without early stopping)."""
        return self.patience - self.bad if self.patience else None
