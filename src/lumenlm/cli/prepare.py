"""`lumenlm prepare DATASET --out DIR`: text -> cleaned splits -> tokenizer -> token files."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command
from lumenlm.data.clean import NORMALIZATIONS, WHITESPACE_MODES
from lumenlm.data.datasets import DATASETS, SPECS, get_spec
from lumenlm.data.datasets.text import DOC_SEPS
from lumenlm.errors import DataError


def _dataset(name: str) -> str:
    """DATASET, checked against the registry: an unknown name is argparse's one-line
    error listing the datasets (not the usage block a `choices=` list would print)."""
    try:
        get_spec(name)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _dataset_help() -> str:
    """The DATASET help, from the registry: its names, then each spec's note."""
    notes = "; ".join(f"{s.name}: {s.help}" for s in SPECS.values() if s.help)
    return "one of: " + ", ".join(DATASETS) + (f" ({notes})" if notes else "")


def _whitespace_help() -> str:
    """The --whitespace help, naming the datasets whose default is keep."""
    keep = " and ".join(s.name for s in SPECS.values() if s.whitespace == "keep")
    return "tidy: strip line ends and document ends; keep: as-is (default: " + (
        f"keep for {keep}, tidy otherwise)" if keep else "tidy)"
    )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "prepare",
        run,
        help="get, clean, split and tokenize a dataset",
        description=(
            "Get a dataset's text (--source PATH, $LUMENLM_DATA/<name>/, the download cache, or a "
            "download when online), clean it, split it train/val/test, train a byte-level BPE "
            "tokenizer (or reuse one), and write train.bin/val.bin/test.bin, tokenizer.json and "
            "meta.json to --out. Runs are deterministic: same inputs and flags, same bytes."
        ),
    )
    p.add_argument(
        "dataset",
        type=_dataset,
        metavar="DATASET",
        help=_dataset_help(),
    )
    p.add_argument("--out", required=True, help="output folder (built atomically)")
    p.add_argument("--source", help="local file or folder with the text (overrides $LUMENLM_DATA)")
    p.add_argument(
        "--preset",
        help="take vocab size, special tokens and --fraction from a preset "
        "(e.g. librarian-1.3m); explicit flags still win",
    )
    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 8000)")
    tok.add_argument(
        "--min-frequency", type=int, default=2, help="min pair count to merge (default 2)"
    )
    tok.add_argument(
        "--special-tokens",
        help="comma-separated special tokens, first ids first "
        "(default <|endoftext|>,<|pad|>,<|system|>,<|user|>,<|assistant|>)",
    )
    tok.add_argument(
        "--tokenizer", metavar="PATH", help="reuse this tokenizer.json (or a folder with one)"
    )
    tok.add_argument(
        "--dtype",
        choices=["auto", "uint16", "uint32"],
        default="auto",
        help="token file dtype (auto: uint16 when the vocab fits)",
    )
    txt = p.add_argument_group("text and splits")
    txt.add_argument(
        "--fraction",
        type=float,
        help="keep this deterministic fraction of the training "
        "documents, chosen by document hash (e.g. 0.02)",
    )
    txt.add_argument(
        "--text-field", default="text", help="JSONL field holding the text (default text)"
    )
    txt.add_argument(
        "--doc-sep",
        choices=DOC_SEPS,
        help="documents in .txt files: one per file, per blank-line paragraph, or "
        "separated by <|endoftext|> lines (default: blank for a single .txt --source, "
        "else file)",
    )
    txt.add_argument(
        "--val-ratio",
        type=float,
        help="share of documents for val where a split "
        "must be carved by hash (default: per dataset)",
    )
    txt.add_argument("--test-ratio", type=float, help="share of documents for test (same rule)")
    txt.add_argument("--dedup", action="store_true", help="drop exact duplicate documents")
    txt.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="NFC",
        help="Unicode normalization (default NFC)",
    )
    txt.add_argument(
        "--whitespace",
        choices=WHITESPACE_MODES,
        help=_whitespace_help(),
    )
    txt.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="non-UTF-8 bytes: stop with an error, or replace them with U+FFFD",
    )
    txt.add_argument("--seed", type=int, default=0, help="seed for hash splits and --fraction")
    run_g = p.add_argument_group("run")
    run_g.add_argument("--workers", type=int, help="encoding threads (default: all cores)")
    run_g.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    run_g.add_argument(
        "--offline", action="store_true", help="never download (also: LUMENLM_OFFLINE=1)"
    )
    run_g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from lumenlm.data.encode import set_threads

    set_threads(args.workers)  # before tokenizers starts its thread pool (checks the count)
    from lumenlm.data.prepare import PrepareConfig, prepare_dataset
    from lumenlm.data.tokenizer import DEFAULT_SPECIALS

    vocab_size, specials, fraction = 8000, list(DEFAULT_SPECIALS), 1.0
    if args.preset:
        from lumenlm.presets import get_preset

        settings = get_preset(args.preset).tokenizer
        vocab_size = settings.get("vocab_size", vocab_size)
        specials = list(settings.get("special_tokens", specials))
        fraction = settings.get("fraction", fraction)
    if args.vocab_size is not None:
        vocab_size = args.vocab_size
    if args.special_tokens is not None:
        specials = [t.strip() for t in args.special_tokens.split(",") if t.strip()]
    if args.fraction is not None:
        fraction = args.fraction

    config = PrepareConfig(
        dataset=args.dataset,
        out=Path(args.out),
        source=args.source,
        vocab_size=vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=specials,
        tokenizer=args.tokenizer,
        fraction=fraction,
        text_field=args.text_field,
        doc_sep=args.doc_sep,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        dedup=args.dedup,
        normalization=args.normalization,
        whitespace=args.whitespace,
        errors=args.errors,
        seed=args.seed,
        workers=args.workers,
        dtype=args.dtype,
        force=args.force,
        offline=args.offline,
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    meta = prepare_dataset(config)
    seconds = time.perf_counter() - t0
    summary = {
        "out": str(config.out),
        "seconds": round(seconds, 2),
        "vocab_size": meta["vocab_size"],
        "dtype": meta["dtype"],
        **{f"{s}_tokens": meta["splits"][s]["tokens"] for s in ("train", "val", "test")},
        **{f"{s}_documents": meta["splits"][s]["documents"] for s in ("train", "val", "test")},
        "bytes_per_token": meta["bytes_per_token"]["all"],
    }
    print(json.dumps(summary))
    return 0
