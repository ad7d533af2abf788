"""What a resumed run may change, and the checks that it resumes what it says.

Exact resume needs the same data, the same trajectory-shaping config and the same
global batch. A resume may still change what only paces or reports the run
(`RESUME_OVERRIDABLE`), the learning rate when asked to (`--reset-lr-schedule`), and
batch_size / grad_accum together with the world size when the global batch stays.
Everything else is refused with a one-line error, as is a run config edited by hand
so that it no longer matches its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumenlm.config import TrainConfig, apply_overrides
from lumenlm.data.tokens import read_meta
from lumenlm.errors import ConfigError, DataError

# Train keys a resumed run may change: they do not affect the weights' trajectory
# (max_steps / max_epochs re-plan the schedule from the resume point, on purpose).
RESUME_OVERRIDABLE = frozenset(
    {
        "eval_interval",
        "log_interval",
        "checkpoint_interval",
        "keep_checkpoints",
        "early_stopping_patience",
        "max_steps",
        "max_epochs",
        "tensorboard",
        "peak_tflops",
    }
)


def data_fingerprint(meta: dict[str, Any]) -> dict[str, str]:
    """{"train.bin": sha256, ..., "tokenizer.json": sha256} from a dataset's meta.json."""
    out: dict[str, str] = {}
    for name, info in sorted((meta.get("splits") or {}).items()):
        if isinstance(info, dict) and info.get("sha256"):
            out[f"{name}.bin"] = str(info["sha256"])
    tok = meta.get("tokenizer")
    if isinstance(tok, dict) and tok.get("sha256"):
        out["tokenizer.json"] = str(tok["sha256"])
    return out


def check_data(recorded: dict[str, str] | None, data_dir: Path) -> None:
    """Refuse to resume on prepared data other than the run's (one-line DataError)."""
    if not recorded:
        return  # a run from before data fingerprints were recorded
    current = data_fingerprint(read_meta(data_dir))
    for name, digest in sorted(recorded.items()):
        if current.get(name) != digest:
            what = "sha256 differs" if name in current else "sha256 is no longer recorded"
            raise DataError(
                f"data in {data_dir} changed since this run started ({name} {what}); "
                "resume needs the same prepared data"
            )


def resume_overrides(
    model_over: dict[str, Any],
    train_over: dict[str, Any],
    train_cfg: TrainConfig,
    saved_world: int,
    world: int,
    given: dict[str, str],
    reset_lr_schedule: bool = False,
    notice: Callable[[str], None] = print,
) -> tuple[TrainConfig, dict[str, Any]]:
    """(train config, the overrides that change it); a one-line error for any other key.

    batch_size / grad_accum may change only together with the world size, keeping the
    global batch (batch_size * grad_accum * world_size) and so the exact batch order.
    `given` maps a field name to the key as the user wrote it, for the messages.
    With `reset_lr_schedule`, the learning-rate keys (`LR_KEYS`) may change too: the
    schedule is then recomputed with the new values from the current step on, and the
    run is no longer bit-identical to an uninterrupted one (`notice` says so).
    """

    def refuse(name: str) -> ConfigError:
        hint = " or add --reset-lr-schedule" if name in LR_KEYS else ""
        return ConfigError(
            f"cannot change {given.get(name, name)} when resuming (it would break exact "
            f"resume); start a new run{hint}"
        )

    if model_over:
        raise refuse(next(iter(model_over)))
    changed: dict[str, Any] = {}
    batch_keys = {k: v for k, v in train_over.items() if k in ("batch_size", "grad_accum")}
    if batch_keys:
        new = apply_overrides(train_cfg, batch_keys, prefix="train.")
        if new.batch_size * new.grad_accum * world == (
            train_cfg.batch_size * train_cfg.grad_accum * saved_world
        ):
            changed.update(batch_keys)
    for name, value in train_over.items():
        if name in changed:
            continue
        if reset_lr_schedule and name in LR_KEYS:
            old = getattr(train_cfg, name)
            if old != value:
                notice(
                    f"{given.get(name, name)} changes from {old} to {value} on resume "
                    "(--reset-lr-schedule): from here on the run is no longer bit-identical "
                    "to an uninterrupted one"
                )
        elif name not in RESUME_OVERRIDABLE:
            try:  # restating the run's own value is harmless
                if apply_overrides(train_cfg, {name: value}) == train_cfg:
                    continue
            except ConfigError:
                pass
            raise refuse(name)
        changed[name] = value
    if changed:
        train_cfg = apply_overrides(train_cfg, changed, prefix="train.")
    return train_cfg, changed


# The learning-rate schedule's keys: `--reset-lr-schedule` lets a resume change them.
LR_KEYS = frozenset({"lr", "min_lr_ratio", "warmup_steps", "schedule", "decay_fraction"})


def check_matches_checkpoint(
    train_cfg: TrainConfig, recorded: dict[str, Any], world_size: int, ckpt: Path, skip: set[str]
) -> None:
    """Refuse a run config.json that disagrees with the checkpoint it resumes from on a
    key that shapes the trajectory (a hand edit): one-line ConfigError.

    The checkpoint's model config records the train config it was trained with; keys
    a resume may change (`skip`, `RESUME_OVERRIDABLE`) are not compared, nor keys that
    only one of the two files holds (`recorded` is the run config's train section as
    written: older versions wrote fewer keys), and batch_size / grad_accum only through
    the global batch.
    """
    try:
        saved = json.loads((ckpt / "config.json").read_text())["training"]["train"]
        saved_world = int(json.loads((ckpt / "trainer_state.json").read_text())["world_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return  # a checkpoint from before this was recorded: nothing to compare
    current = train_cfg.__dict__
    for key in sorted(set(saved) & set(recorded)):  # keys both files wrote themselves
        if key in skip or key in RESUME_OVERRIDABLE or key not in current:
            continue
        if key in ("batch_size", "grad_accum"):
            was = saved["batch_size"] * saved["grad_accum"] * saved_world
            now = train_cfg.batch_size * train_cfg.grad_accum * world_size
            if was == now:
                continue
        if saved[key] != current[key] and not (
            isinstance(saved[key], list) and tuple(saved[key]) == current[key]
        ):
            also = " (or resume with --reset-lr-schedule)" if key in LR_KEYS else ""
            raise ConfigError(
                f"the run's config.json has {key}={current[key]!r} but checkpoint "
                f"{ckpt.name} was trained with {key}={saved[key]!r} (was config.json "
                f"edited?); put the value back{also}, or start a new run to change it"
            )
