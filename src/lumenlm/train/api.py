"""`train(...)`: start or resume a run directory (the function behind `lumenlm train`)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig, apply_overrides
from lumenlm.data.tokens import read_meta
from lumenlm.errors import ConfigError, DataError
from lumenlm.modelio import atomic_write_text
from lumenlm.train import distributed as D
from lumenlm.train.checkpoint import find_resume_checkpoint
from lumenlm.train.resolve import resolve_config, split_overrides
from lumenlm.train.runs import CONFIG, create_run_dir
from lumenlm.train.trainer import Trainer


def _notice(msg: str, env: D.DistEnv) -> None:
    if env.is_main:
        print(f"notice: {msg}", file=sys.stderr, flush=True)


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


def _check_data(recorded: dict[str, str] | None, data_dir: Path) -> None:
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


def _resume_overrides(
    overrides: dict[str, Any], train_cfg: TrainConfig, saved_world: int, world: int
) -> tuple[TrainConfig, dict[str, Any]]:
    """(train config, the overrides that change it); a one-line error for any other key.

    batch_size / grad_accum may change only together with the world size, keeping the
    global batch (batch_size * grad_accum * world_size) and so the exact batch order.
    """
    changed: dict[str, Any] = {}
    _, t_all = split_overrides(overrides)
    batch_keys = {k: v for k, v in t_all.items() if k in ("batch_size", "grad_accum")}
    if batch_keys:
        new = apply_overrides(train_cfg, batch_keys, prefix="train.")
        if new.batch_size * new.grad_accum * world == (
            train_cfg.batch_size * train_cfg.grad_accum * saved_world
        ):
            changed.update(batch_keys)
    for key, value in overrides.items():
        m_over, t_over = split_overrides({key: value})
        name = next(iter(m_over or t_over))
        if t_over and name in changed:
            continue
        if m_over or name not in RESUME_OVERRIDABLE:
            if t_over:
                try:  # restating the run's own value is harmless
                    if apply_overrides(train_cfg, t_over) == train_cfg:
                        continue
                except ConfigError:
                    pass
            raise ConfigError(
                f"cannot change {key} when resuming (it would break exact resume); start a new run"
            )
        changed[name] = value
    if changed:
        train_cfg = apply_overrides(train_cfg, changed, prefix="train.")
    return train_cfg, changed


def _fit_vocab(model_cfg: ModelConfig, meta: dict[str, Any], env: D.DistEnv) -> ModelConfig:
    """Take the vocabulary size from the prepared data when it differs from the preset."""
    vocab = int(meta["vocab_size"])
    if vocab != model_cfg.vocab_size:
        _notice(
            f"dataset vocab_size {vocab} differs from the model's {model_cfg.vocab_size}; "
            f"using {vocab}",
            env,
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
    max_steps: int | None = None,
    max_minutes: float | None = None,
    resume: str | Path | None = None,
    device: str | None = "auto",
    precision: str | None = None,
    compile: bool | None = None,
    strategy: str | None = None,
    progress_bar: bool = True,
) -> Path:
    """Train a new run under `out_dir` (or resume `resume`) and return the run directory.

    `overrides` maps config keys (`lr`, `train.lr`, `model.d_model`, ...) to values.
    `max_steps` stops this invocation once the run reaches that optimizer step and
    `max_minutes` after that much wall time; neither changes the planned schedule
    (`train.max_steps` / `train.max_epochs`), so a resumed run continues it exactly.
    Under torchrun, every rank calls this; only rank 0 writes files.
    """
    overrides = dict(overrides or {})
    if precision is not None:
        overrides["train.precision"] = precision
    if compile is not None:
        overrides["train.compile"] = bool(compile)
    if strategy is not None:
        overrides["train.strategy"] = strategy
    env = D.setup(device)
    try:
        if resume is not None:
            trainer = _resume(Path(resume), overrides, env, max_steps, max_minutes, progress_bar)
        else:
            trainer = _fresh(
                preset,
                data_dir,
                out_dir,
                config_file,
                overrides,
                env,
                max_steps,
                max_minutes,
                progress_bar,
            )
        return trainer.fit()
    finally:
        D.cleanup()


def _fresh(
    preset: str | None,
    data_dir: str | Path | None,
    out_dir: str | Path,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    env: D.DistEnv,
    max_steps: int | None,
    max_minutes: float | None,
    progress_bar: bool,
) -> Trainer:
    preset_name, model_cfg, train_cfg = resolve_config(preset, config_file, overrides)
    if data_dir is None and config_file is not None:
        from lumenlm.config import read_mapping

        doc = read_mapping(config_file)
        data_dir = doc.get("data") or doc.get("data_dir")
    if data_dir is None:
        raise DataError("no data directory given; pass --data DIR (a `lumenlm prepare` output)")
    data_dir = Path(data_dir).resolve()
    meta = read_meta(data_dir)
    model_cfg = _fit_vocab(model_cfg, meta, env)
    run_dir = None
    if env.is_main:
        run_dir = create_run_dir(out_dir)
    run_dir = Path(D.broadcast_object(str(run_dir) if run_dir else None, env))
    try:
        trainer = Trainer(
            model_cfg,
            train_cfg,
            data_dir,
            run_dir,
            env=env,
            max_steps=max_steps,
            max_minutes=max_minutes,
            progress_bar=progress_bar,
        )
    except BaseException:
        if env.is_main:  # nothing trained: do not leave an empty run behind
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if env.is_main:
        doc = {
            # `lumenlm.modelio.load(run_dir)` resolves checkpoints/best (else last).
            "format": "lumenlm",
            "format_version": 1,
            "kind": "run",
            "run_id": run_dir.name,
            "preset": preset_name,
            "data_dir": str(data_dir),
            "data_sha256": data_fingerprint(meta),
            "model": model_cfg.to_dict(),
            "train": dataclasses.asdict(train_cfg),
            "total_steps": trainer.p.total_steps,
            "world_size": env.world_size,
            "device": str(env.device),
            "precision": trainer.precision,
            "parameters": trainer.n_params,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "status": "running",
        }
        atomic_write_text(run_dir / CONFIG, json.dumps(doc, indent=2) + "\n")
    return trainer


def _resume(
    run_dir: Path,
    overrides: dict[str, Any],
    env: D.DistEnv,
    max_steps: int | None,
    max_minutes: float | None,
    progress_bar: bool,
) -> Trainer:
    path = run_dir / CONFIG
    try:
        doc = json.loads(path.read_text())
        model_cfg = ModelConfig.from_dict(doc["model"])
        train_cfg = TrainConfig.from_saved(doc["train"])
        data_dir = Path(doc["data_dir"])
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: corrupt run config ({exc})") from None
    saved_world = int(doc.get("world_size") or 1)
    train_cfg, changed = _resume_overrides(overrides, train_cfg, saved_world, env.world_size)
    _check_data(doc.get("data_sha256"), data_dir)
    ckpt = find_resume_checkpoint(run_dir, log=lambda m: _notice(m.removeprefix("notice: "), env))
    _notice(f"resuming {run_dir.name} from {ckpt.name}", env)
    trainer = Trainer(
        model_cfg,
        train_cfg,
        data_dir,
        run_dir,
        env=env,
        resume_from=ckpt,
        max_steps=max_steps,
        max_minutes=max_minutes,
        progress_bar=progress_bar,
        replan=bool({"max_steps", "max_epochs"} & set(changed)),
    )
    if changed and env.is_main:  # a later resume must see them (Trainer() wrote nothing yet)
        doc["train"] = dataclasses.asdict(train_cfg)
        doc["total_steps"] = trainer.p.total_steps
        doc["world_size"] = env.world_size  # the global batch is checked against it
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return trainer
