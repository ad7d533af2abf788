"""`lumenlm inspect MODEL --text TEXT`: attention maps, per-layer states, logit lens."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument, check_positive


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "inspect",
        run,
        help="attention maps, per-layer states and logit lens",
        description="Run MODEL on TEXT and write attention.png (layers x heads), "
        "logit_lens.png and inspect.json (tokens, attention patterns, residual norms, "
        "attention entropy, logit-lens top-k per layer).",
    )
    add_model_argument(p)
    add_verify_argument(p)
    p.add_argument("--text", required=True, help="text to run through the model")
    p.add_argument("--out", default="inspect_out", help="output directory (default: inspect_out)")
    p.add_argument(
        "--top-k", type=int, default=5, help="logit-lens tokens per position (default 5)"
    )


def run(args: argparse.Namespace) -> int:
    from lumenlm.inspect import write_inspection
    from lumenlm.modelio import check_output_dir, load

    check_positive(args, "top_k")
    check_output_dir(args.out, "--out")
    model = load(args.model, verify=args.verify)
    paths = write_inspection(model, args.text, args.out, top_k=args.top_k)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
