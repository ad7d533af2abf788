"""`lumenlm inspect MODEL --text TEXT --out DIR`: attention maps, logit lens, per-token
loss, direct logit attribution, head ablation and induction scores, with an index.html."""

from __future__ import annotations

import argparse
import sys

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument, check_positive
from lumenlm.cli.generate import add_dtype_arg, load_in_dtype

_ANALYSES = "attention, logit_lens, token_loss, dla, head_ablation, induction"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "inspect",
        run,
        help="look inside a model on one text (attention, logit lens, attribution, ...)",
        description="Run MODEL on TEXT and write, into --out: attention.png (layers x "
        "heads), logit_lens.png/.json, token_loss.html (tokens coloured by loss; hover "
        "for predictions), dla_heads.png/dla_layers.png (direct logit attribution), "
        "head_ablation.png (loss change per zeroed head), induction.png (induction-head "
        "scores on a repeated random sequence), inspect.json (all data) and index.html "
        "linking them. No page makes a network request. A text longer than the context "
        "is cropped to its first context_length tokens, with a notice.",
    )
    add_model_argument(p)
    add_verify_argument(p)
    p.add_argument("--text", required=True, help="text to run through the model")
    p.add_argument("--out", default="inspect_out", help="output directory (default: inspect_out)")
    p.add_argument(
        "--analyses",
        default="all",
        help=f"comma-separated subset of: {_ANALYSES} (default: all)",
    )
    p.add_argument(
        "--top-k", type=int, default=5, help="predictions listed per position (default 5)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_dtype_arg(p, default="fp32")


def run(args: argparse.Namespace) -> int:
    from lumenlm.inspect import parse_analyses, write_report
    from lumenlm.modelio import check_output_dir

    check_positive(args, "top_k")
    analyses = parse_analyses(args.analyses)
    check_output_dir(args.out, "--out")
    model = load_in_dtype(args.model, args.device, args.dtype, args.verify, what="lumenlm inspect")
    report = write_report(model, args.text, args.out, analyses, top_k=args.top_k)
    if report.notice:
        print(f"lumenlm inspect: note: {report.notice}", file=sys.stderr)
    for name, paths in report.files.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    print(f"index: {report.index}")
    return 0
