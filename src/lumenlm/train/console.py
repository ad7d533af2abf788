"""What a training run shows on the terminal: notices, the opening line, the progress
bar and the closing line.

Only the main process prints (under torchrun every rank runs the same code), and
everything goes to stderr, so stdout carries only the run directory a script reads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lumenlm.train.checkpoint import Progress
from lumenlm.train.stop import StopReason


class Console:
    """The run's terminal output; silent on every rank but the main one."""

    def __init__(self, enabled: bool = True, progress_bar: bool = True) -> None:
        self.enabled = enabled
        self.show_bar = enabled and progress_bar

    def say(self, msg: str) -> None:
        """One line to stderr (main process only)."""
        if self.enabled and msg:
            print(msg, file=sys.stderr, flush=True)

    def notice(self, msg: str) -> None:
        """`notice: ...`: something the user should know that does not stop the run
        (nothing when `msg` is empty)."""
        if msg:
            self.say(f"notice: {msg}")

    def announce(self, run_dir: Path, n_params: int, device: Any, setup: str, sampler: Any,
                 progress: Progress) -> None:  # fmt: skip
        """The opening line: what trains where (`setup`: precision, processes), from where."""
        self.say(
            f"run {run_dir} | {n_params:,} parameters | device {device} ({setup}) | "
            f"{sampler.steps_per_epoch} steps/epoch, {progress.total_steps} planned, "
            f"starting at step {progress.step}"
        )

    def progress_bar(self, progress: Progress, max_minutes: float | None = None) -> Any:
        """A tqdm bar (None when hidden or not the main process): over the planned steps,
        or, under `--max-minutes`, over the budget's seconds, so that its ETA is the time
        the budget has left and not that of a schedule the budget will cut short."""
        if not self.show_bar:
            return None
        from tqdm.auto import tqdm

        # In a log file (not a terminal) a redraw every second would flood it.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        if max_minutes is not None:
            bar = tqdm(
                total=round(max_minutes * 60),
                desc="train (time budget)",
                unit="s",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=interval,
            )
            bar.budgeted = True
            return bar
        return tqdm(
            total=progress.total_steps,
            initial=progress.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=interval,
        )

    @staticmethod
    def advance(bar: Any, progress: Progress, elapsed_s: float, postfix: dict[str, Any]) -> None:
        """Move the bar after a step: one step, or to the budget's seconds spent (with the
        step count in the postfix)."""
        if getattr(bar, "budgeted", False):
            bar.update(max(0, min(bar.total, int(elapsed_s)) - bar.n))
            postfix = {"step": f"{progress.step}/{progress.total_steps}", **postfix}
        else:
            bar.total = max(bar.total, progress.total_steps)
            bar.update(1)
        bar.set_postfix(postfix, refresh=False)


def final_message(reason: StopReason, progress: Progress, run_dir: Path) -> str:
    """The closing line: how and where it stopped, the best val loss, how to go on."""
    p = progress
    best = (
        f", best val loss {p.best_val_loss:.4f} at step {p.best_step}"
        if p.best_val_loss is not None
        else ""
    )
    more = f"; continue with: lumenlm train --resume {run_dir}" if reason.paused else ""
    return f"{reason.description} at step {p.step}/{p.total_steps}{best}; run dir {run_dir}{more}"
