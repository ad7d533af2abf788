"""`lumenlm reproduce CARD`: a seed model card from raw text to a finished model card."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from lumenlm.reproduce.cards import CARDS

    p = add_command(
        sub,
        common,
        "reproduce",
        run,
        help="reproduce a seed model card: prepare, train, eval, sample, card, export",
        description="Reproduce the card CARD in one folder: prepare its dataset and "
        "tokenizer, train its preset with the recipe (card: the card's own; fast: tuned for "
        "a time budget), evaluate with the card's metrics, sample, write the model card and "
        "a Hugging Face export, then print the card's numbers beside ours. A step whose "
        "output is there and valid is skipped, so running it again continues an "
        "interrupted reproduction.",
    )
    p.add_argument("card", choices=sorted(CARDS), help="the seed card to reproduce")
    p.add_argument("--recipe", choices=["card", "fast"], default="card", help="(default: card)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=10.0,
        help="training time budget in minutes (default: 10)",
    )
    p.add_argument(
        "--data-root",
        help="folder of the raw datasets (default: $LUMENLM_DATA, the cache, or a download)",
    )
    p.add_argument("--out", help="the reproduction's folder (default: reproduce/CARD-RECIPE)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lumenlm.reproduce import reproduce

    r = reproduce(
        args.card,
        recipe=args.recipe,
        budget_minutes=args.budget_minutes,
        out=args.out,
        data_root=args.data_root,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"\nmodel card: {(r.out / 'MODEL_CARD.md').resolve()}")
    return 0
