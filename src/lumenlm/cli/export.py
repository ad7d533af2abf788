"""`lumenlm export MODEL --format hf|gguf --out PATH`: write a transformers dir or a GGUF file."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "export",
        run,
        help="export a model to Hugging Face transformers or GGUF (llama.cpp)",
        description="Export MODEL (a model dir or run dir). --format hf writes a directory "
        "that transformers' AutoModelForCausalLM.from_pretrained loads: GPT-2 style models "
        "become GPT2LMHeadModel, Llama style models LlamaForCausalLM, any other (e.g. "
        "Lumiere) ships its own model code (trust_remote_code=True). --format gguf writes "
        "one file that llama.cpp runs (Llama and GPT-2 families).",
    )
    add_model_argument(p)
    add_verify_argument(p)
    p.add_argument(
        "--format", choices=["hf", "gguf"], default="hf", help="output format (default: hf)"
    )
    p.add_argument(
        "--out", required=True, help="output directory (hf) or file (gguf), written atomically"
    )
    p.add_argument(
        "--outtype",
        choices=["f32", "f16", "q8_0"],
        help="GGUF tensor type (default: f32); norms and biases stay f32",
    )
    p.add_argument("--tokenizer", help="tokenizer.json to include (default: the model's own)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from lumenlm.modelio import check_output_dir, check_output_file, load

    if args.format == "gguf":
        from lumenlm.export.gguf import export_gguf, gguf_architecture

        check_output_file(args.out, "--out")
        model = load(args.model, verify=args.verify)
        arch = gguf_architecture(model.config)
        outtype = args.outtype or "f32"
        out = export_gguf(model, args.out, outtype, tokenizer_path=args.tokenizer, force=args.force)
        print(f"exported {arch} ({outtype}) to {out}")
        return 0
    from lumenlm.errors import ConfigError
    from lumenlm.export.hf import export_hf, hf_architecture

    if args.outtype is not None:
        raise ConfigError("--outtype is for --format gguf; a Hugging Face export keeps the dtype")

    check_output_dir(args.out, "--out")
    model = load(args.model, verify=args.verify)
    arch = hf_architecture(model.config)
    out = export_hf(model, args.out, tokenizer_path=args.tokenizer, force=args.force)
    print(f"exported {arch} to {out}")
    return 0
