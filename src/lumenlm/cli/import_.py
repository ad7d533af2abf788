"""`lumenlm import HF_DIR --out MODEL_DIR`: a local transformers checkpoint into lumenlm.

(The module is `import_` because `import` is a Python keyword; the command is `import`.)
"""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "import",
        run,
        help="import a Hugging Face GPT-2 or Llama checkpoint as a lumenlm model dir",
        description="Convert HF_DIR, a local transformers checkpoint (config.json + "
        "safetensors) of a GPT2LMHeadModel, a LlamaForCausalLM or an earlier lumenlm "
        "export, into a lumenlm model directory that eval, inspect, finetune, serve and "
        "export use. Its byte-level BPE tokenizer comes along; a config field lumenlm "
        "cannot reproduce (rope scaling, sliding window, ...) is refused by name.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="transformers checkpoint directory")
    p.add_argument("--out", required=True, help="model directory to write (atomically)")
    p.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="import the weights alone (e.g. when the tokenizer is not byte-level BPE)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from lumenlm.export.hf_import import import_hf
    from lumenlm.modelio import check_output_dir

    check_output_dir(args.out, "--out")
    out = import_hf(args.hf_dir, args.out, tokenizer=not args.no_tokenizer, force=args.force)
    print(f"imported {args.hf_dir} to {out}")
    return 0
