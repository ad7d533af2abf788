"""`train(...)`: start or resume a run directory (the function behind `lumenlm train`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.data.tokens import read_meta
from lumenlm.errors import ConfigError, DataError
from lumenlm.fsutil import DirLock
from lumenlm.train import distributed as D
from lumenlm.train.checkpoint import find_resume_checkpoint
from lumenlm.train.console import Console
from lumenlm.train.resolve import resolve, split_overrides
from lumenlm.train.resume import (
    LR_KEYS,
    check_data,
    check_matches_checkpoint,
    data_fingerprint,
    resume_overrides,
)
from lumenlm.train.runs import RunRecord, create_run_dir
from lumenlm.train.stop import TrainingError
from lumenlm.train.trainer import Trainer


def _fit_vocab(model_cfg: ModelConfig, meta: dict[str, Any], console: Console) -> ModelConfig:
    """Take the vocabulary size from the prepared data when it differs from the preset."""
    vocab = int(meta["vocab_size"])
    if vocab != model_cfg.vocab_size:
        console.notice(
            f"dataset vocab_size {vocab} differs from the model's {model_cfg.vocab_size}; "
            f"using {vocab}"
        )
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    return model_cfg


def train(
    preset: str | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path = "runs",
    overrides: dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    stop_at_step: int | None = None,
    max_minutes: float | None = None,
    resume: str | Path | None = None,
    device: str | None = "auto",
    precision: str | None = None,
    compile: bool | None = None,
    strategy: str | None = None,
    progress_bar: bool = True,
    on_step: Callable[[Trainer], None] | None = None,
    reset_lr_schedule: bool = False,
    max_steps: int | None = None,
) -> Path:
    """Train a new run under `out_dir` (or resume `resume`) and return the run directory.

    `overrides` maps config keys (`lr`, `train.lr`, `model.d_model`, ...) to values;
    `precision`, `compile` and `strategy` set those train fields the same way.
    `stop_at_step` stops this invocation once the run reaches that optimizer step and
    `max_minutes` after that much wall time; neither changes the planned schedule
    (`train.max_steps` / `train.max_epochs`), so a resumed run continues it exactly.
    `reset_lr_schedule` lets a resume change the learning-rate keys (`lr`, ...). The
    run folder is locked while it trains: a second process gets a one-line refusal.
    `max_steps=` is the deprecated name of `stop_at_step=`. Under torchrun, every rank
    calls this; only rank 0 writes files.
    """
    if max_steps is not None:
        warnings.warn(
            "train(max_steps=) is deprecated: use stop_at_step= (it bounds this call; the "
            "schedule length is the train.max_steps config key)",
            DeprecationWarning,
            stacklevel=2,
        )
        stop_at_step = max_steps if stop_at_step is None else stop_at_step
    overrides = dict(overrides or {})
    model_over, train_over = split_overrides(overrides)
    given = {key.rpartition(".")[2]: key for key in overrides}  # as written, for messages
    flags = {"precision": precision, "compile": compile, "strategy": strategy}
    for name, value in flags.items():
        if value is not None:
            train_over[name] = value
            given[name] = f"--{name}"
    env = D.setup(device)
    console = Console(env.is_main, progress_bar)
    limits = {  # what every Trainer of this call shares
        "env": env,
        "progress_bar": progress_bar,
        "stop_at_step": stop_at_step,
        "max_minutes": max_minutes,
        "on_step": on_step,
    }
    with contextlib.ExitStack() as held:  # the run's lock, released however this ends
        try:
            if resume is not None:
                over = (model_over, train_over, given)
                trainer = _resume(Path(resume), over, env, console, limits, held, reset_lr_schedule)
            else:
                trainer = _fresh(
                    preset, data_dir, out_dir, config_file, model_over, train_over, env,
                    console, limits, held,
                )  # fmt: skip
            return trainer.fit()
        finally:
            D.cleanup()


def _lock(
    run_dir: Path, env: D.DistEnv, console: Console, held: contextlib.ExitStack, resume: bool
) -> None:
    """Make this process the run's only writer (rank 0 writes for all ranks, and every
    rank learns of a refusal). A folder that is not a run is left alone (no lock file)."""
    holder = None
    is_run = RunRecord(run_dir, {}).path.is_file() if resume else run_dir.is_dir()
    if env.is_main and is_run:
        lock = DirLock(run_dir)
        holder = lock.acquire()
        if holder is None:
            held.callback(lock.release)
            if lock.stale_pid is not None and lock.stale_pid != os.getpid():
                console.notice(
                    f"took over the lock of process {lock.stale_pid}, which stopped without "
                    "releasing it"
                )
    holder = D.broadcast_object(holder, env)
    if holder is not None:
        who = f"process {holder}" if holder > 0 else "another process"
        raise TrainingError(
            f"{run_dir} is being trained by {who}; wait for it to finish (or stop it), then resume"
        )


def _fresh(
    preset: str | None,
    data_dir: str | Path | None,
    out_dir: str | Path,
    config_file: str | Path | None,
    model_over: dict[str, Any],
    train_over: dict[str, Any],
    env: D.DistEnv,
    console: Console,
    limits: dict[str, Any],
    held: contextlib.ExitStack,
) -> Trainer:
    resolved = resolve(preset, config_file, model_over, train_over)
    model_cfg, train_cfg = resolved.model, resolved.train
    data_dir = data_dir if data_dir is not None else resolved.data_dir
    if data_dir is None:
        raise DataError("no data directory given; pass --data DIR (a `lumenlm prepare` output)")
    data_dir = Path(data_dir).resolve()
    meta = read_meta(data_dir)
    model_cfg = _fit_vocab(model_cfg, meta, console)
    run_dir = None
    if env.is_main:
        run_dir = create_run_dir(out_dir)
    run_dir = Path(D.broadcast_object(str(run_dir) if run_dir else None, env))
    _lock(run_dir, env, console, held, resume=False)
    record = RunRecord(run_dir, {}, write=env.is_main)
    try:
        trainer = Trainer(model_cfg, train_cfg, data_dir, run_dir, record=record, **limits)
    except BaseException:
        if env.is_main:  # nothing trained: do not leave an empty run behind
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    record.update(
        # `lumenlm.modelio.load(run_dir)` resolves checkpoints/best (else last).
        format="lumenlm",
        format_version=1,
        kind="run",
        run_id=run_dir.name,
        preset=resolved.preset,
        data_dir=str(data_dir),
        data_sha256=data_fingerprint(meta),
        model=model_cfg.to_dict(),
        train=dataclasses.asdict(train_cfg),
        total_steps=trainer.p.total_steps,
        world_size=env.world_size,
        device=str(env.device),
        precision=trainer.precision,
        parameters=trainer.n_params,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        status="running",
    )
    return trainer


def _resume(
    run_dir: Path,
    over: tuple[dict[str, Any], dict[str, Any], dict[str, str]],
    env: D.DistEnv,
    console: Console,
    limits: dict[str, Any],
    held: contextlib.ExitStack,
    reset_lr_schedule: bool,
) -> Trainer:
    _lock(run_dir, env, console, held, resume=True)
    record = RunRecord.read(run_dir, write=env.is_main)
    doc = record.doc
    try:
        model_cfg = ModelConfig.from_dict(doc["model"])
        train_cfg = TrainConfig.from_saved(doc["train"])
        data_dir = Path(doc["data_dir"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{record.path}: corrupt run config ({exc})") from None
    saved_world = int(doc.get("world_size") or 1)
    model_over, train_over, given = over
    train_cfg, changed = resume_overrides(
        model_over, train_over, train_cfg, saved_world, env.world_size, given,
        reset_lr_schedule=reset_lr_schedule, notice=console.notice,
    )  # fmt: skip
    check_data(doc.get("data_sha256"), data_dir)
    ckpt = find_resume_checkpoint(run_dir, log=lambda m: console.notice(m.removeprefix("notice: ")))
    skip = set(changed) | (set(LR_KEYS) if reset_lr_schedule else set())
    check_matches_checkpoint(train_cfg, doc["train"], env.world_size, ckpt, skip=skip)
    console.notice(f"resuming {run_dir.name} from {ckpt.name}")
    replan = bool({"max_steps", "max_epochs"} & set(changed))
    trainer = Trainer(
        model_cfg, train_cfg, data_dir, run_dir, record=record, resume_from=ckpt,
        replan=replan, **limits,
    )  # fmt: skip
    if changed:  # a later resume must see them (Trainer() wrote nothing yet)
        record.update(
            train=dataclasses.asdict(train_cfg),
            total_steps=trainer.p.total_steps,
            world_size=env.world_size,  # the global batch is checked against it
        )
    return trainer
