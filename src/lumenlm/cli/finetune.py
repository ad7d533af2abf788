"""`lumenlm finetune`: supervised fine-tuning of a model on chat or instruction JSONL."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import get_args

from lumenlm.cli.common import add_command, add_model_argument
from lumenlm.config.choices import Precision, Strategy


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "finetune",
        run,
        help="fine-tune a model on chat or instruction JSONL",
        description=textwrap.fill(
            "Supervised fine-tuning: a new run under RUNS/ that starts from MODEL's weights "
            'and trains on the assistant turns of chat JSONL ({"messages": [...]}) or the '
            'output of instruction JSONL ({"instruction", "input", "output"}). Same '
            "trainer, run directory, checkpoints and resume (`lumenlm train --resume RUN`) "
            "as pretraining; the checkpoints carry the chat template, so `chat`, `serve` and "
            "export use it. See docs/FINETUNE.md."
        ),
    )
    add_model_argument(p)
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE_OR_DIR",
        help="a .jsonl file (split off by hash, --val-ratio) or a folder with train.jsonl "
        "and val.jsonl",
    )
    p.add_argument(
        "--out", metavar="RUNS", default="runs", help="parent of run directories (default: runs)"
    )
    p.add_argument(
        "--template",
        metavar="NAME",
        help="chat template: plain, turns (special tokens <|user|> <|assistant|> <|end|>) "
        "or a .json file (default: the model's own)",
    )
    p.add_argument(
        "--train-on-prompt",
        action="store_true",
        help="train on every token, not only the assistant's",
    )
    p.add_argument(
        "--val-ratio",
        type=float,
        default=0.05,
        help="share of a single --data file held out for validation (default 0.05)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a train field (lr=3e-5, max_epochs=2, batch_size=16) or dropout "
        "(repeatable)",
    )
    p.add_argument("--stop-at-step", type=int, metavar="N", help="stop this invocation at step N")
    p.add_argument(
        "--max-minutes", type=float, metavar="M", help="stop this invocation after M minutes"
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    p.add_argument("--precision", choices=get_args(Precision), help="numeric precision")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "--strategy", choices=get_args(Strategy), help="distributed strategy under torchrun"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from lumenlm.errors import ConfigError
    from lumenlm.train.api import finetune
    from lumenlm.train.resolve import parse_set_args
    from lumenlm.train.stop import TrainingInterrupted

    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise ConfigError(f"--stop-at-step must be positive, got {args.stop_at_step}")
    if args.max_minutes is not None and not (0 < args.max_minutes < float("inf")):
        raise ConfigError(
            f"--max-minutes must be a positive number, got {args.max_minutes}; use e.g. 30"
        )
    try:
        run_dir = finetune(
            args.model,
            args.data,
            args.out,
            parse_set_args(args.overrides),
            template=args.template,
            train_on_prompt=args.train_on_prompt,
            val_ratio=args.val_ratio,
            stop_at_step=args.stop_at_step,
            max_minutes=args.max_minutes,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            strategy=args.strategy,
            progress_bar=not args.no_progress,
        )
    except TrainingInterrupted as exc:
        print(f"lumenlm finetune: {exc}", file=sys.stderr)
        return exc.exit_code
    print(run_dir)
    return 0
