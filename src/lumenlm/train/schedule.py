"""Learning-rate schedule as a pure function of the optimizer step.

Being a pure function (no scheduler object with hidden state) is what makes resume
exact: the learning rate for step `s` is recomputed, never restored. The one schedule
that depends on the clock, warmup-stable-decay under `--max-minutes`, keeps that
property by turning the clock into two integers once, when its decay begins
(`plan_decay`): the run's planned end and the decay's length, both saved in the
checkpoint's `Progress`, so a resumed run recomputes the same learning rates.
"""

from __future__ import annotations

import math

from lumenlm.config import Schedule


def wsd_decay_steps(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """The decay length of a warmup-stable-decay schedule planned in steps (no time
    budget): the last `decay_fraction` of the steps after warmup, at least one."""
    return max(1, round(decay_fraction * max(0, total_steps - warmup_steps)))


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    schedule: Schedule = "cosine",
    decay_fraction: float = 0.2,
    decay_steps: int | None = None,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then decay to
    `lr * min_lr_ratio` at `total_steps` ("cosine" or "linear"), or stay at `lr`
    ("constant"). "wsd" (warmup-stable-decay) holds `lr` and then decays linearly to
    the floor over the last `decay_steps` steps before `total_steps` (when None, the
    last `decay_fraction` of the steps after warmup). Steps past `total_steps` keep
    the floor.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    min_lr = lr * min_lr_ratio
    if schedule == "wsd":
        if decay_steps is None:
            decay_steps = wsd_decay_steps(total_steps, warmup_steps, decay_fraction)
        start = total_steps - decay_steps
        if step < start:
            return lr
        # step start+decay_steps-1, the last one trained, reaches the floor exactly
        progress = min(1.0, (step - start + 1) / decay_steps)
        return lr - (lr - min_lr) * progress
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay))
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def plan_decay(
    step: int,
    total_steps: int,
    *,
    elapsed_s: float,
    limit_s: float,
    steps_done: int,
    decay_fraction: float,
    reserve_s: float = 0.0,
    margin: float = 0.95,
) -> tuple[int, int] | None:
    """When a time-budgeted warmup-stable-decay run should start its decay: None while
    less than `1 - decay_fraction` of `limit_s` has elapsed, else (new total_steps,
    decay_steps) so that the decay ends when the time does.

    The step rate is measured over this invocation (`steps_done` steps in `elapsed_s`,
    evaluations and checkpoints included); `reserve_s` is kept for the closing
    evaluation, and `margin` leaves slack for a slower step. The decay never runs past
    the planned `total_steps`.
    """
    if steps_done <= 0 or elapsed_s < (1.0 - decay_fraction) * limit_s:
        return None
    s_per_step = elapsed_s / steps_done
    left = max(0.0, limit_s - elapsed_s - reserve_s) * margin
    decay = max(1, min(int(left / s_per_step), total_steps - step))
    return step + decay, decay
