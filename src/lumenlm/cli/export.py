"""`lumenlm export MODEL --format hf --out DIR`: write a transformers checkpoint."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "export",
        run,
        help="export a model to Hugging Face transformers format",
        description="Export MODEL (a model dir or run dir) to a directory that "
        "transformers' AutoModelForCausalLM.from_pretrained loads: GPT-2 style models "
        "become GPT2LMHeadModel, Llama style models LlamaForCausalLM.",
    )
    add_model_argument(p)
    add_verify_argument(p)
    p.add_argument("--format", choices=["hf"], default="hf", help="output format (default: hf)")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--tokenizer", help="tokenizer.json to include (default: the model's own)")
    p.add_argument(
        "--force", action="store_true", help="replace --out even if it is not an earlier export"
    )


def run(args: argparse.Namespace) -> int:
    from lumenlm.export.hf import export_hf, hf_architecture
    from lumenlm.modelio import check_output_dir, load

    check_output_dir(args.out, "--out")
    model = load(args.model, verify=args.verify)
    arch = hf_architecture(model.config)
    out = export_hf(model, args.out, tokenizer_path=args.tokenizer, force=args.force)
    print(f"exported {arch} to {out}")
    return 0
