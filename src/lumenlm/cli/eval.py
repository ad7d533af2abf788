"""`lumenlm eval MODEL`: language-model metrics on a prepared split and zero-shot benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument, check_positive
from lumenlm.cli.generate import add_dtype_arg


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "eval",
        run,
        help="loss, perplexity, bits-per-byte, top-k accuracy; ARC/HellaSwag/wikitext; lm-eval",
        description=(
            "Evaluate MODEL (a model dir or a run dir). With --data: mean token cross-entropy, "
            "perplexity, bits-per-byte and top-1/5/10 next-token accuracy on a prepared split. "
            "With --tasks: zero-shot multiple-choice accuracy (acc, acc_norm) scored by "
            "log-likelihood exactly as lm-evaluation-harness does, and wikitext's word "
            "perplexity, byte perplexity and bits per byte (lm-eval's wikitext task). With "
            "--harness: any lm-evaluation-harness task, run in process on the model "
            "(pip install 'lumenlm[harness]')."
        ),
    )
    add_model_argument(p)
    add_verify_argument(p)
    p.add_argument("--data", metavar="DIR", help="prepared dataset dir (meta.json + <split>.bin)")
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="score --data even when it was encoded with another tokenizer than the model's",
    )
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
        help="comma-separated benchmarks: arc-easy,arc-challenge,hellaswag,wikitext",
    )
    p.add_argument(
        "--harness",
        metavar="LIST",
        help="comma-separated lm-evaluation-harness task names (arc_easy,piqa,wikitext,...), "
        "run in process through lm-eval's LM interface",
    )
    p.add_argument(
        "--harness-include",
        metavar="DIR",
        help="folder of extra lm-eval task YAMLs (lm-eval --include_path), e.g. local data",
    )
    p.add_argument(
        "--num-fewshot", type=int, help="few-shot examples for --harness tasks (default: task's)"
    )
    p.add_argument(
        "--tasks-dir",
        metavar="DIR",
        help="folder with task files (ARC-*-Test.jsonl, hellaswag_val.jsonl or "
        "hellaswag_val_full.txt, wiki.test.raw; directly or under arc/, hellaswag/, "
        "wikitext-2-raw/); "
        "default $LUMENLM_DATA, then download",
    )
    p.add_argument("--no-download", action="store_true", help="never download task files")
    p.add_argument(
        "--limit", type=int, help="score only the first N items (documents) of each task"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="windows (LM metrics) or questions (tasks) per forward pass (default 16)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    add_dtype_arg(p, default="fp32")
    p.add_argument("--out", metavar="FILE.json", help="write the report as JSON")
    p.add_argument(
        "--per-example",
        metavar="FILE.jsonl",
        help="write one line per task question (log-likelihoods, prediction, gold) "
        "or wikitext document (log-likelihood, words, bytes, tokens)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumenlm.cli.generate import load_in_dtype
    from lumenlm.data.tokenizer import load_tokenizer
    from lumenlm.devices import resolve_device
    from lumenlm.errors import ConfigError
    from lumenlm.evaluate import evaluate_lm, evaluate_tasks
    from lumenlm.evaluate.report import build_report, format_table, write_examples, write_json
    from lumenlm.evaluate.tasks import parse_task_list
    from lumenlm.infer.dtype import dtype_name
    from lumenlm.modelio import check_output_file

    if not args.data and not args.tasks and not args.harness:
        raise ConfigError(
            "nothing to evaluate: give --data DIR, --tasks LIST and/or --harness LIST"
        )
    check_positive(args, "limit", "batch_size", "window", "stride", "max_tokens")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if (args.harness_include or args.num_fewshot is not None) and not args.harness:
        raise ConfigError("--harness-include and --num-fewshot need --harness LIST")
    if args.per_example and not args.tasks:
        raise ConfigError("--per-example needs --tasks; add --tasks LIST or drop --per-example")
    # before any work: a report that cannot be written must not cost a whole evaluation
    if args.out:
        check_output_file(args.out, "--out")
    if args.per_example:
        check_output_file(args.per_example, "--per-example")
    task_names = parse_task_list(args.tasks) if args.tasks else []
    harness_names = [t.strip() for t in (args.harness or "").split(",") if t.strip()]
    if args.harness:
        if not harness_names:
            raise ConfigError("--harness needs task names, e.g. --harness arc_easy,piqa")
        from lumenlm.evaluate import harness  # the missing extra fails here, before loading

        harness.check_include_path(args.harness_include)
    device = str(resolve_device(args.device))
    model = load_in_dtype(args.model, device, args.dtype, args.verify, what="lumenlm eval")
    info = {
        "model": str(model.model_dir),
        "device": device,
        "dtype": dtype_name(model),
    }

    lm = None
    if args.data:
        lm = evaluate_lm(
            model,
            args.data,
            args.split,
            args.window,
            args.stride,
            args.batch_size,
            args.max_tokens,
            allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
        )
        info["data"] = str(args.data)
    tokenizer = model.tokenizer
    if tokenizer is None and args.data and (Path(args.data) / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(args.data)
    tasks = None
    if task_names:
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
    harness_out = None
    if harness_names:
        harness_out = harness.run_harness(
            model,
            harness_names,
            tokenizer,
            args.harness_include,
            args.limit,
            args.num_fewshot,
            args.batch_size,
        )
        info["limit"] = args.limit
    if lm is not None or tasks:
        print(format_table(lm, tasks))
    if harness_out is not None:
        print(harness.harness_table(harness_out))
    summary = harness.harness_summary(harness_out) if harness_out is not None else None
    doc = build_report(lm, tasks, info, summary)
    if args.out:
        print(f"wrote {write_json(doc, args.out)}", file=sys.stderr)
        _update_run_card(Path(args.model), Path(args.out))
    if args.per_example and tasks:
        print(f"wrote {write_examples(tasks, args.per_example)}", file=sys.stderr)
    return 0


def _update_run_card(model: Path, out: Path) -> None:
    """An eval report written into the run it scored goes into that run's model card."""
    from lumenlm.train.card import write_card

    run = model.resolve()
    if (run / "checkpoints").is_dir() and out.resolve().parent == run:
        print(f"updated {write_card(run, eval_file=out)}", file=sys.stderr)
