"""What every subcommand's parser shares, written once.

Each subcommand's parser inherits the global flags (`--debug`) and dispatches to its
module's `run`; the commands that work on a model (generate, chat, serve, eval, export,
inspect) take it as the same MODEL positional, so it reads the same in every `--help`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_command(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    **options: Any,
) -> argparse.ArgumentParser:
    """Add subcommand `name` (with the `common` flags) that calls `run`; its parser.

    `options` go to `add_parser` as they are (epilog, formatter_class, ...).
    """
    p = sub.add_parser(name, parents=[common], help=help, description=description, **options)
    p.set_defaults(func=run)
    return p


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """The MODEL positional: a model directory, or a run directory (its best checkpoint)."""
    p.add_argument("model", metavar="MODEL", help="model directory or run directory")
