"""Why one `lumenlm train` invocation stops, as named values, and the two errors that
end one early.

Every rank must stop at the same step, so each rank computes its reason and the
ranks agree on the largest (`distributed.any_rank`): the values order the reasons,
and a name is always read back through the enum, never by position.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path

from lumenlm.errors import LumenError, first_line


class TrainingError(LumenError):
    """Training cannot go on (non-finite loss, data too small for a step)."""


class TrainingInterrupted(LumenError):
    """SIGINT/SIGTERM: a checkpoint was saved; the run can be resumed."""

    def __init__(self, message: str, run_dir: Path, signum: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = 128 + signum


class StopReason(IntEnum):
    """A reason to stop before the next optimizer step (larger wins across ranks)."""

    FINISHED = 1
    """The planned steps (or epochs) are done."""
    STEP_LIMIT = 2
    """`--stop-at-step` reached: paused, resumable."""
    TIME_LIMIT = 3
    """`--max-minutes` reached: paused, resumable."""
    SIGNAL = 4
    """SIGINT/SIGTERM: a checkpoint is saved and the run can be resumed."""
    EARLY_STOPPED = 5
    """No validation improvement for `early_stopping_patience` evaluations."""

    @staticmethod
    def first(
        *, early_stopped: bool, done: bool, signalled: bool, step_limit: bool, time_limit: bool
    ) -> StopReason | None:
        """The reason to stop before the next step, in order of precedence (or None)."""
        for hit, reason in (
            (early_stopped, StopReason.EARLY_STOPPED),
            (done, StopReason.FINISHED),
            (signalled, StopReason.SIGNAL),
            (step_limit, StopReason.STEP_LIMIT),
            (time_limit, StopReason.TIME_LIMIT),
        ):
            if hit:
                return reason
        return None

    @property
    def paused(self) -> bool:
        """A limit of this invocation, not of the run: the schedule goes on when resumed."""
        return self in (StopReason.STEP_LIMIT, StopReason.TIME_LIMIT)

    @property
    def status(self) -> str:
        """The run status recorded in config.json and the checkpoints."""
        if self.paused:
            return "paused"
        if self is StopReason.SIGNAL:
            return "interrupted"
        return self.name.lower()

    @property
    def description(self) -> str:
        """How the final console line says it."""
        return {
            StopReason.FINISHED: "finished",
            StopReason.STEP_LIMIT: "stopped at --stop-at-step",
            StopReason.TIME_LIMIT: "stopped at --max-minutes",
            StopReason.SIGNAL: "interrupted",
            StopReason.EARLY_STOPPED: "early stopping (no val improvement)",
        }[self]


def diverged_error(what: str, run_dir: Path, lr: float) -> TrainingError:
    """The error of a diverged run: what went wrong, and how to go on at a lower lr (from
    its last good checkpoint when there is one)."""
    lower = f"--set lr={min(lr / 10, 1e-3):g}"  # a tenth, and never a huge lr again
    if (run_dir / "checkpoints" / "last").exists():
        advice = (
            "the last good checkpoint is kept; resume it with a lower lr: lumenlm train "
            f"--resume {run_dir} --reset-lr-schedule {lower}"
        )
    else:
        advice = f"no checkpoint was written yet; start a new run with {lower}"
    return TrainingError(f"{what}; stopped without saving ({advice}, or --precision fp32)")


def write_error(exc: BaseException, run_dir: Path) -> TrainingError | None:
    """A one-line error for a failed write (disk full, read-only), else None: the last
    checkpoint is intact, so the run resumes once the cause is fixed."""
    if not (isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"):
        return None
    first = first_line(exc)
    if (run_dir / "checkpoints" / "last").exists():
        then = f"resume with: lumenlm train --resume {run_dir}"
    else:
        then = "start a new run (no checkpoint was written yet)"
    return TrainingError(
        f"cannot write the run's files ({first}); free space or fix permissions, then {then}"
    )


class TimeBudget:
    """`--max-minutes` for the whole invocation, its closing evaluation included.

    The closing evaluation's cost is estimated from the training steps timed so far (a
    forward pass is about a third of a training micro-step). `clock` is the time source
    (seconds), injectable so that tests simulate time instead of waiting for it.
    """

    def __init__(self, max_minutes: float | None, clock: Callable[[], float] = time.time) -> None:
        self.limit_s = None if max_minutes is None else max_minutes * 60
        self.now = clock
        self.start = clock()
        self.train_s, self.steps = 0.0, 0

    def step_done(self, seconds: float) -> None:
        self.train_s += seconds
        self.steps += 1

    def elapsed(self) -> float:
        """Seconds since this invocation's budget started."""
        return self.now() - self.start

    def reserve(self, micro_batches_per_step: int, eval_batches: int) -> float:
        """Estimated seconds of the closing evaluation (`eval_batches` batches)."""
        if not (self.steps and eval_batches):
            return 0.0
        return eval_batches * self.train_s / self.steps / micro_batches_per_step / 3

    def used_up(self, micro_batches_per_step: int, eval_batches: int) -> bool:
        """True once the time spent plus the closing evaluation's reaches the limit
        (`eval_batches` is 0 when the last step was already evaluated)."""
        if self.limit_s is None:
            return False
        reserve = self.reserve(micro_batches_per_step, eval_batches)
        return self.elapsed() + reserve >= self.limit_s
