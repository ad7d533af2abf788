"""`lumenlm presets`: list presets with their exact parameter counts, or show one.

`--show NAME` prints the preset as YAML with every `model.` / `train.` key's meaning as a
comment beside its value, so one screen answers both "what does this preset set" and
"what could I `--set`"; the text still loads with `yaml.safe_load`, and `--json` gives
the same values as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from lumenlm.cli.common import add_command

if TYPE_CHECKING:
    from lumenlm.config import Preset


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "presets",
        run,
        help="list presets with exact parameter counts",
        description="List the built-in presets (architecture + training recipe) with exact parameter counts.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of the table (with --show: instead of the commented YAML)",
    )
    p.add_argument(
        "--show",
        metavar="NAME",
        help="print one preset's full model and train config, each key with its meaning "
        "(the keys `lumenlm train --set` accepts)",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from lumenlm.presets import count_parameters, get_preset, preset_names

    if args.show:
        preset = get_preset(args.show)
        if args.json:
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
        else:
            print(_show_yaml(preset))
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


def _show_yaml(preset: Preset) -> str:
    """The preset as YAML, its model and train keys commented with their docstrings."""
    import textwrap

    import yaml

    from lumenlm.config.docs import WIDTH, commented_yaml

    head = [
        f"# {line}" for line in textwrap.wrap(f"{preset.name}: {preset.description}", WIDTH - 2)
    ]
    head += [
        f"# Change a key with `lumenlm train --preset {preset.name} --set model.KEY=VALUE`",
        "# (or train.KEY=VALUE; write null for None). The same values as JSON: add --json.",
    ]
    top = {"name": preset.name, "dataset": preset.dataset, "tokenizer": preset.tokenizer}
    return "\n".join(
        [
            *head,
            yaml.safe_dump(top, sort_keys=False, width=10**6).rstrip("\n"),
            commented_yaml("model", preset.model),
            commented_yaml("train", preset.train),
        ]
    )
