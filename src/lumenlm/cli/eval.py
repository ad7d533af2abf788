"""`lumenlm eval MODEL`: language-model metrics on a prepared split and zero-shot benchmarks."""

from __future__ import annotations

import argparse
import sys

from lumenlm.cli.common import add_command, add_model_argument
from lumenlm.cli.generate import add_dtype_arg


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "eval",
        run,
        help="loss, perplexity, bits-per-byte, top-k accuracy; ARC/HellaSwag",
        description=(
            "Evaluate MODEL (a model dir or a run dir). With --data: mean token cross-entropy, "
            "perplexity, bits-per-byte and top-1/5/10 next-token accuracy on a prepared split. "
            "With --tasks: zero-shot multiple-choice accuracy (acc, acc_norm) scored by "
            "log-likelihood exactly as lm-evaluation-harness does."
        ),
    )
    add_model_argument(p)
    p.add_argument("--data", metavar="DIR", help="prepared dataset dir (meta.json + <split>.bin)")
    p.add_argument("--split", default="val", help="split to score (default: val)")
    p.add_argument("--window", type=int, help="tokens per window (default: model context length)")
    p.add_argument(
        "--stride",
        type=int,
        help="tokens between window starts (default: = window, non-overlapping); "
        "smaller = sliding window, each token still scored once",
    )
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens of the split")
    p.add_argument(
        "--tasks",
        metavar="LIST",
        help="comma-separated benchmarks: arc-easy,arc-challenge,hellaswag",
    )
    p.add_argument(
        "--tasks-dir",
        metavar="DIR",
        help="folder with task files (ARC-*-Test.jsonl, hellaswag_val.jsonl or "
        "hellaswag_val_full.txt, directly or under arc/ and hellaswag/); "
        "default $LUMENLM_DATA, then download",
    )
    p.add_argument("--no-download", action="store_true", help="never download task files")
    p.add_argument("--limit", type=int, help="score only the first N items of each task")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="windows (LM metrics) or questions (tasks) per forward pass (default 16)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    add_dtype_arg(p)
    p.add_argument("--out", metavar="FILE.json", help="write the report as JSON")
    p.add_argument(
        "--per-example",
        metavar="FILE.jsonl",
        help="write one line per task question (log-likelihoods, prediction, gold)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumenlm.cli.generate import torch_dtype
    from lumenlm.data.tokenizer import load_tokenizer
    from lumenlm.devices import resolve_device
    from lumenlm.errors import ConfigError
    from lumenlm.evaluate import evaluate_lm, evaluate_tasks
    from lumenlm.evaluate.report import build_report, format_table, write_examples, write_json
    from lumenlm.evaluate.tasks import parse_task_list
    from lumenlm.modelio import load

    if not args.data and not args.tasks:
        raise ConfigError("nothing to evaluate: give --data DIR and/or --tasks LIST")
    for flag in ("limit", "batch_size", "window", "stride", "max_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.per_example and not args.tasks:
        raise ConfigError("--per-example needs --tasks")
    task_names = parse_task_list(args.tasks) if args.tasks else []
    device = str(resolve_device(args.device))
    model = load(args.model, device=device, dtype=torch_dtype(args.dtype))
    info = {
        "model": str(model.model_dir),
        "device": device,
        "dtype": args.dtype,
    }

    lm = None
    if args.data:
        lm = evaluate_lm(
            model, args.data, args.split, args.window, args.stride, args.batch_size, args.max_tokens
        )
        info["data"] = str(args.data)
    tasks = None
    if task_names:
        tokenizer = model.tokenizer
        if tokenizer is None and args.data and (Path(args.data) / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(args.data)
        tasks = evaluate_tasks(
            model,
            task_names,
            tokenizer,
            args.tasks_dir,
            args.limit,
            args.batch_size,
            download=not args.no_download,
        )
        info["limit"] = args.limit
    print(format_table(lm, tasks))
    doc = build_report(lm, tasks, info)
    if args.out:
        print(f"wrote {write_json(doc, args.out)}", file=sys.stderr)
    if args.per_example and tasks:
        print(f"wrote {write_examples(tasks, args.per_example)}", file=sys.stderr)
    return 0
