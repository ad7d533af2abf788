"""`lumenlm runs`: list the runs in a directory with their best metrics."""

from __future__ import annotations

import argparse
import json

from lumenlm.cli.common import add_command


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "runs",
        run,
        help="list training runs and their best metrics",
        description="List the runs under RUNS_DIR with status, steps and best val loss.",
    )
    p.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        metavar="RUNS_DIR",
        help="directory holding run directories (default: runs)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumenlm.errors import ConfigError
    from lumenlm.train.runs import list_runs

    if not Path(args.runs_dir).is_dir():
        raise ConfigError(
            f"{args.runs_dir}: no such runs directory; give the --out folder of `lumenlm train`"
        )
    rows = list_runs(args.runs_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return 0

    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    header = ["run", "preset", "status", "steps", "best_val_loss", "best_step", "last_loss"]
    table = [[fmt(r[h]) for h in header] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0
