"""Training: the loop, optimizer groups, schedule, precision, checkpoints, logging,
distributed (torchrun DDP / FSDP2).

    from lumenlm.train import train
    run_dir = train(preset="tiny", data_dir="data/tinystories", out_dir="runs", stop_at_step=100)

`Trainer` is the loop itself; `train()` resolves the config, creates or resumes the
run directory and calls `Trainer.fit()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "list_runs", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from lumenlm.train.api import train
    from lumenlm.train.runs import list_runs
    from lumenlm.train.stop import TrainingError, TrainingInterrupted
    from lumenlm.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import lumenlm.train` light (no torch until needed).
    if name == "train":
        from lumenlm.train.api import train

        return train
    if name == "list_runs":
        from lumenlm.train.runs import list_runs

        return list_runs
    if name == "Trainer":
        from lumenlm.train.trainer import Trainer

        return Trainer
    if name in ("TrainingError", "TrainingInterrupted"):
        from lumenlm.train import stop

        return getattr(stop, name)
    raise AttributeError(f"module 'lumenlm.train' has no attribute {name!r}")
