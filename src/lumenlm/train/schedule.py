"""Learning-rate schedule as a pure function of the optimizer step.

Being a pure function (no scheduler object with hidden state) is what makes resume
exact: the learning rate for step `s` is recomputed, never restored.
"""

from __future__ import annotations

import math

from lumenlm.config import Schedule


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    schedule: Schedule = "cosine",
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then decay to
    `lr * min_lr_ratio` at `total_steps` ("cosine" or "linear"), or stay at `lr`
    ("constant"). Steps past `total_steps` keep the floor.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    min_lr = lr * min_lr_ratio
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
