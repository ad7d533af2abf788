"""`lumenlm presets`: list presets with their exact parameter counts."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "presets",
        parents=[common],
        help="list presets with exact parameter counts",
        description="List the built-in presets (architecture + training recipe) with exact parameter counts.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show", metavar="NAME", help="print one preset's full model and train config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from lumenlm.presets import count_parameters, get_preset, preset_names

    if args.show:
        preset = get_preset(args.show)
        print(
            json.dumps(
                {
                    "name": preset.name,
                    "model": dataclasses.asdict(preset.model),
                    "train": dataclasses.asdict(preset.train),
                    "dataset": preset.dataset,
                    "tokenizer": preset.tokenizer,
                },
                indent=2,
            )
        )
        return 0
    rows = []
    for name in preset_names():
        p = get_preset(name)
        m = p.model
        rows.append(
            {
                "name": name,
                "parameters": count_parameters(m),
                "layers": m.n_layers,
                "d_model": m.d_model,
                "heads": f"{m.n_heads}/{m.n_kv_heads}",
                "ctx": m.context_length,
                "vocab": m.vocab_size,
                "norm": m.norm,
                "mlp": m.activation,
                "positions": m.positions,
                "description": p.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = [
        "name",
        "parameters",
        "layers",
        "d_model",
        "heads",
        "ctx",
        "vocab",
        "norm",
        "mlp",
        "positions",
    ]
    table = [[str(r[h]) if h != "parameters" else f"{r[h]:,}" for h in header] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print(
            "  ".join(
                c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
    return 0
