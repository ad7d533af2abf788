"""`lumenlm train`: train a model from a preset/config on a prepared dataset, or resume a run."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import get_args

from lumenlm.config.choices import Precision, Strategy


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a model (or resume a run)",
        description=textwrap.fill(
            "Train a GPT-style model on a prepared dataset. Writes RUNS/<run-id>/ with the "
            "resolved config, metrics.jsonl, loss_curve.png, README.md and checkpoints/"
            "{last,best,step_N}. Works the same under `torchrun --nproc_per_node N`."
        ),
        epilog=_SET_KEYS,
        formatter_class=_Help,
    )
    p.add_argument("--preset", help="preset name (see `lumenlm presets`)")
    p.add_argument(
        "--config", metavar="FILE", help="YAML/JSON with preset:, model:, train: sections"
    )
    p.add_argument("--data", metavar="DIR", help="prepared dataset directory (`lumenlm prepare`)")
    p.add_argument(
        "--out", metavar="RUNS", default="runs", help="parent of run directories (default: runs)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field: lr=1e-3, train.batch_size=16, model.d_model=128 "
        "(repeatable)",
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last good checkpoint"
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start a new run from these weights (a run, model directory or import): "
        "continued pretraining with a fresh schedule; the data must be prepared with "
        "--tokenizer MODEL/tokenizer.json",
    )
    p.add_argument(
        "--stop-at-step",
        type=int,
        metavar="N",
        help="stop this invocation once the run reaches step N (the schedule is unchanged; "
        "its length is --set max_steps)",
    )
    p.add_argument(
        "--max-steps",
        dest="old_max_steps",
        type=int,
        metavar="N",
        help="deprecated name of --stop-at-step",
    )
    p.add_argument(
        "--max-minutes", type=float, metavar="M", help="stop this invocation after M minutes"
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    p.add_argument(
        "--precision",
        choices=get_args(Precision),
        help="numeric precision (default: the recipe's, usually auto)",
    )
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "--strategy", choices=get_args(Strategy), help="distributed strategy under torchrun"
    )
    p.add_argument(
        "--reset-lr-schedule",
        action="store_true",
        help="with --resume: let --set change lr, min_lr_ratio, warmup_steps or schedule "
        "(the schedule is recomputed from the current step; the run is then no longer "
        "bit-identical to an uninterrupted one)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumenlm.errors import ConfigError
    from lumenlm.train.api import train
    from lumenlm.train.resolve import parse_set_args
    from lumenlm.train.stop import TrainingInterrupted

    if args.resume is None and args.preset is None and args.config is None and not args.init_from:
        raise ConfigError(
            "give --preset NAME (or --config FILE), --init-from MODEL, or --resume RUN_DIR"
        )
    if args.resume is not None and args.init_from is not None:
        raise ConfigError("--resume continues a run with its own weights; drop --init-from")
    if args.resume is not None and (args.preset or args.config or args.data):
        raise ConfigError(
            "--resume takes the preset, config and data from the run; drop --preset/--config/--data"
        )
    if args.old_max_steps is not None:
        if _is_rank0():
            print(
                "notice: --max-steps is deprecated; use --stop-at-step (it bounds this "
                "invocation; the schedule's length is --set max_steps)",
                file=sys.stderr,
            )
        if args.stop_at_step is None:
            args.stop_at_step = args.old_max_steps
    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise ConfigError(
            f"--stop-at-step must be positive, got {args.stop_at_step}; use a step >= 1"
        )
    if args.max_minutes is not None and not (0 < args.max_minutes < float("inf")):
        raise ConfigError(
            f"--max-minutes must be a positive number, got {args.max_minutes}; use e.g. 30"
        )
    if args.reset_lr_schedule and args.resume is None:
        raise ConfigError("--reset-lr-schedule only applies with --resume RUN_DIR; drop it")
    try:
        run_dir = train(
            preset=args.preset,
            data_dir=args.data,
            out_dir=args.out,
            overrides=parse_set_args(args.overrides),
            config_file=args.config,
            stop_at_step=args.stop_at_step,
            max_minutes=args.max_minutes,
            resume=args.resume,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            strategy=args.strategy,
            progress_bar=not args.no_progress,
            reset_lr_schedule=args.reset_lr_schedule,
            init_from=args.init_from,
        )
    except TrainingInterrupted as exc:
        if _is_rank0():
            print(f"lumenlm train: {exc}", file=sys.stderr)
        return exc.exit_code
    if _is_rank0():  # under torchrun every rank returns here; print the run dir once
        print(run_dir)
    return 0


def _is_rank0() -> bool:
    import os

    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


_SET_KEYS = "(the --set keys)"  # replaced by their documentation when help is shown


class _Help(argparse.RawDescriptionHelpFormatter):
    """Renders the --set key list only when help is printed (it parses config sources)."""

    def add_text(self, text: str | None) -> None:
        if text == _SET_KEYS:
            from lumenlm.config.docs import describe_set_keys

            text = describe_set_keys()
        super().add_text(text)
