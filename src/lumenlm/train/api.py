"""`train(...)` and `finetune(...)`: start or resume a run directory (the functions behind
`lumenlm train` and `lumenlm finetune`). A fine-tuning run is an ordinary run whose
config.json has a "finetune" section; `train(resume=...)` resumes either kind."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig, apply_overrides
from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.sft import load_source
from lumenlm.data.tokens import read_meta
from lumenlm.errors import ConfigError, DataError
from lumenlm.fsutil import DirLock
from lumenlm.modelio import TOKENIZER_NAME, atomic_write_text
from lumenlm.train import distributed as D
from lumenlm.train import finetune as FT
from lumenlm.train.checkpoint import find_resume_checkpoint
from lumenlm.train.console import Console
from lumenlm.train.resolve import Resolved, resolve, split_overrides
from lumenlm.train.resume import (
    LR_KEYS,
    check_data,
    check_matches_checkpoint,
    data_fingerprint,
    resume_overrides,
)
from lumenlm.train.runs import RunRecord, create_run_dir
from lumenlm.train.sft_data import SFTTrainData, check_files
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
    init_from: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> Path:
    """Train a new run under `out_dir` (or resume `resume`) and return the run directory.

    `overrides` maps config keys (`lr`, `train.lr`, `model.d_model`, ...) to values;
    `precision`, `compile` and `strategy` set those train fields the same way.
    `stop_at_step` stops this invocation once the run reaches that optimizer step and
    `max_minutes` after that much wall time; neither changes the planned schedule
    (`train.max_steps` / `train.max_epochs`), so a resumed run continues it exactly.
    `reset_lr_schedule` lets a resume change the learning-rate keys (`lr`, ...). The
    run folder is locked while it trains: a second process gets a one-line refusal.
    `max_steps=` is the deprecated name of `stop_at_step=`. `init_from` (a run, a model
    directory or an import) starts a new run from those weights (continued pretraining):
    the architecture is the model's, the schedule is fresh, and the data must be encoded
    with the model's tokenizer. `clock` times `max_minutes` (tests simulate time with
    it). Under torchrun, every rank calls this; only rank 0 writes files.
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
        "clock": clock,
    }
    with contextlib.ExitStack() as held:  # the run's lock, released however this ends
        try:
            if resume is not None:
                over = (model_over, train_over, given)
                trainer = _resume(Path(resume), over, env, console, limits, held, reset_lr_schedule)
            else:
                trainer = _fresh(
                    preset, data_dir, out_dir, config_file, model_over, train_over, env,
                    console, limits, held, init_from,
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
    init_from: str | Path | None = None,
) -> Trainer:
    base = None
    if init_from is not None:
        base = FT.open_base(init_from, need_tokenizer=False)
        FT.check_model_overrides(model_over, init_from)
        if preset is None and config_file is None:
            resolved = Resolved(
                None, base.model.config, apply_overrides(TrainConfig(), train_over, prefix="train.")
            )
        else:
            resolved = resolve(preset, config_file, {}, train_over)
        model_cfg = FT.with_dropout(base.model.config, model_over)
        train_cfg = resolved.train
    else:
        resolved = resolve(preset, config_file, model_over, train_over)
        model_cfg, train_cfg = resolved.model, resolved.train
    data_dir = data_dir if data_dir is not None else resolved.data_dir
    if data_dir is None:
        raise DataError("no data directory given; pass --data DIR (a `lumenlm prepare` output)")
    data_dir = Path(data_dir).resolve()
    meta = read_meta(data_dir)
    start: dict[str, Any] = {}
    if base is not None:
        FT.check_dataset_tokenizer(base, meta, data_dir)
        state = {k: v.detach().cpu() for k, v in base.model.state_dict().items()}
        start = {"init_state": state, "origin": {"base": base.provenance}}
    else:
        model_cfg = _fit_vocab(model_cfg, meta, console)
    run_dir, record = _new_run(out_dir, env, console, held)
    try:
        trainer = Trainer(model_cfg, train_cfg, data_dir, run_dir, record=record, **start, **limits)
        if base is not None and "chat" in base.model.meta:  # the model's template carries over
            trainer.data.model_extra["chat"] = base.model.meta["chat"]
    except BaseException:
        _discard(run_dir, env)
        raise
    if base is not None:
        record.update(init_from=base.provenance)
    record.update(
        **_run_fields(run_dir, trainer, env, model_cfg, train_cfg),
        preset=resolved.preset,
        data_dir=str(data_dir),
        data_sha256=data_fingerprint(meta),
    )
    return trainer


def _run_fields(
    run_dir: Path,
    trainer: Trainer,
    env: Any,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
) -> dict[str, Any]:
    """The config.json fields every new run starts with (pretraining and fine-tuning);
    `lumenlm.modelio.load(run_dir)` resolves checkpoints/best (else last)."""
    return dict(
        format="lumenlm",
        format_version=1,
        kind="run",
        run_id=run_dir.name,
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


def _new_run(
    out_dir: str | Path, env: D.DistEnv, console: Console, held: contextlib.ExitStack
) -> tuple[Path, RunRecord]:
    """A fresh run directory under `out_dir` (made by rank 0), locked, and its record."""
    run_dir = None
    if env.is_main:
        run_dir = create_run_dir(out_dir)
    run_dir = Path(D.broadcast_object(str(run_dir) if run_dir else None, env))
    _lock(run_dir, env, console, held, resume=False)
    return run_dir, RunRecord(run_dir, {}, write=env.is_main)


def _discard(run_dir: Path, env: D.DistEnv) -> None:
    """Remove a run that failed before training (nothing trained: leave nothing behind)."""
    if env.is_main:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def finetune(
    model: str | Path,
    data: str | Path,
    out_dir: str | Path = "runs",
    overrides: dict[str, Any] | None = None,
    *,
    template: str | None = None,
    train_on_prompt: bool = False,
    val_ratio: float = 0.05,
    stop_at_step: int | None = None,
    max_minutes: float | None = None,
    device: str | None = "auto",
    precision: str | None = None,
    compile: bool | None = None,
    strategy: str | None = None,
    progress_bar: bool = True,
    on_step: Callable[[Trainer], None] | None = None,
) -> Path:
    """Fine-tune `model` (a run, model directory or import) on chat or instruction JSONL
    `data` (a file split by hash with `val_ratio`, or a folder with train.jsonl and
    val.jsonl) in a new run under `out_dir`; returns the run directory.

    The loss is on assistant tokens only (`train_on_prompt` trains on every token);
    conversations are packed with block-diagonal masks; `template` (a name in
    `lumenlm.data.chat_template.TEMPLATES` or a .json file) replaces the model's own, and
    its missing special tokens are added. The recipe is `finetune.FINETUNE_DEFAULTS`
    under `overrides` (`--set` keys). Resume with `train(resume=RUN_DIR)`.
    """
    model_over, train_over = split_overrides(dict(overrides or {}))
    flags = {"precision": precision, "compile": compile, "strategy": strategy}
    train_over.update({k: v for k, v in flags.items() if v is not None})
    FT.check_model_overrides(model_over, model)
    train_cfg = FT.finetune_config(train_over)
    env = D.setup(device)
    console = Console(env.is_main, progress_bar)
    limits = {"env": env, "progress_bar": progress_bar, "stop_at_step": stop_at_step,
              "max_minutes": max_minutes, "on_step": on_step}  # fmt: skip
    with contextlib.ExitStack() as held:
        try:
            base = FT.open_base(model, need_tokenizer=True)
            tpl, tpl_name = FT.pick_template(template, base)
            source = load_source(data, val_ratio, train_cfg.seed)  # bad data: no run dir
            state, model_cfg, tok, added = FT.grown_start(base, tpl)
            model_cfg = FT.with_dropout(model_cfg, model_over)
            if added:
                console.notice(
                    f"added special token(s) {', '.join(added)} to the tokenizer; vocab_size "
                    f"{base.model.config.vocab_size} -> {model_cfg.vocab_size}"
                )
            setup = {"template": tpl, "template_name": tpl_name, "train_on_prompt": train_on_prompt,
                     "data": str(Path(data).resolve()), "val_ratio": val_ratio}  # fmt: skip
            sft = _sft_data(source, tok, model_cfg, train_cfg, env, setup)
            run_dir, record = _new_run(out_dir, env, console, held)
            try:
                sft.tokenizer_path = run_dir / TOKENIZER_NAME
                if env.is_main:
                    atomic_write_text(sft.tokenizer_path, tok.to_str())
                D.barrier(env)
                origin = _ft_origin(base.provenance | {"added_tokens": added}, sft, setup)
                trainer = Trainer(
                    model_cfg, train_cfg, run_dir, run_dir, record=record, data=sft,
                    init_state=state, origin=origin, **limits,
                )  # fmt: skip
                # the assistant-token loss of the starting weights, for the card
                origin["finetune"]["base_val_loss"] = trainer.evaluate()
                console.notice(
                    f"assistant-token val loss before fine-tuning: "
                    f"{origin['finetune']['base_val_loss']:.4f}"
                )
            except BaseException:
                _discard(run_dir, env)
                raise
            record.update(
                **_run_fields(run_dir, trainer, env, model_cfg, train_cfg),
                preset=None,
                data_dir=setup["data"],
                init_from=origin["base"],
                finetune={
                    **_ft_record(setup, sft),
                    "base_val_loss": origin["finetune"]["base_val_loss"],
                },
            )
            return trainer.fit()
        finally:
            D.cleanup()


def _sft_data(
    source: Any, tok: Any, model_cfg: ModelConfig, train_cfg: TrainConfig, env: D.DistEnv,
    setup: dict[str, Any], tokenizer_path: Path | None = None,
) -> SFTTrainData:  # fmt: skip
    return SFTTrainData(
        source, setup["template"], tok, tokenizer_path or Path(TOKENIZER_NAME), model_cfg,
        train_cfg, env, train_on_prompt=setup["train_on_prompt"], pad_id=FT.pad_id_of(tok),
    )  # fmt: skip


def _ft_record(setup: dict[str, Any], sft: SFTTrainData) -> dict[str, Any]:
    """config.json's "finetune": what a resume rebuilds the rows from, and the counts."""
    return {
        "data": setup["data"],
        "val_ratio": setup["val_ratio"],
        "template": setup["template"].to_dict(),
        "template_name": setup["template_name"],
        **sft.summary(),
    }


def _ft_origin(base: dict[str, Any], sft: SFTTrainData, setup: dict[str, Any]) -> dict[str, Any]:
    return {"base": base, "finetune": {**sft.summary(), "template_name": setup["template_name"]}}


def _resume_finetune(
    run_dir: Path, doc: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig,
    env: D.DistEnv,
) -> dict[str, Any]:  # fmt: skip
    """The Trainer arguments that rebuild a fine-tuning run's rows (same files, same
    tokenizer and template as recorded)."""
    from lumenlm.data.tokenizer import load_tokenizer

    ft = doc["finetune"]
    check_files(ft["files"])
    tok = load_tokenizer(run_dir / TOKENIZER_NAME)
    tpl = ChatTemplate.from_meta({"chat": ft["template"]})
    setup = {"template": tpl, "template_name": ft.get("template_name"),
             "train_on_prompt": bool(ft.get("train_on_prompt")), "data": ft["data"],
             "val_ratio": float(ft["val_ratio"])}  # fmt: skip
    source = load_source(ft["data"], setup["val_ratio"], train_cfg.seed)
    sft = _sft_data(source, tok, model_cfg, train_cfg, env, setup, run_dir / TOKENIZER_NAME)
    origin = _ft_origin(doc.get("init_from") or {}, sft, setup)
    origin["finetune"]["base_val_loss"] = ft.get("base_val_loss")
    return {"data": sft, "origin": origin}


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
    start: dict[str, Any] = {}
    if "finetune" in doc:
        start = _resume_finetune(run_dir, doc, model_cfg, train_cfg, env)
    else:
        check_data(doc.get("data_sha256"), data_dir)
        if doc.get("init_from"):
            start = {"origin": {"base": doc["init_from"]}}
    ckpt = find_resume_checkpoint(run_dir, log=lambda m: console.notice(m.removeprefix("notice: ")))
    skip = set(changed) | (set(LR_KEYS) if reset_lr_schedule else set())
    check_matches_checkpoint(train_cfg, doc["train"], env.world_size, ckpt, skip=skip)
    console.notice(f"resuming {run_dir.name} from {ckpt.name}")
    replan = bool({"max_steps", "max_epochs"} & set(changed))
    trainer = Trainer(
        model_cfg, train_cfg, data_dir, run_dir, record=record, resume_from=ckpt,
        replan=replan, **start, **limits,
    )  # fmt: skip
    if changed:  # a later resume must see them (Trainer() wrote nothing yet)
        record.update(
            train=dataclasses.asdict(train_cfg),
            total_steps=trainer.p.total_steps,
            world_size=env.world_size,  # the global batch is checked against it
        )
    return trainer
