"""What every subcommand's parser shares, written once.

Each subcommand's parser inherits the global flags (`--debug`) and dispatches to its
module's `run`; the commands that work on a model (generate, chat, serve, eval, export,
inspect) take it as the same MODEL positional, so it reads the same in every `--help`,
and the same `--no-verify` switch for the checksum check `lumenlm.modelio.load` does.
Sizes (counts, lengths, top-k) are checked by one helper so that 0 or a negative number
is refused with the same one line everywhere, before any model is loaded.
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


def add_verify_argument(p: argparse.ArgumentParser) -> None:
    """`--no-verify` (sets `args.verify = False`): skip the manifest sha256 check on load."""
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking the model files against the checkpoint's manifest.json sha256 "
        "(and the tokenizer against the fingerprint in config.json)",
    )


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse 0 or a negative value of each named size flag that was given (one line)."""
    from lumenlm.errors import ConfigError

    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be >= 1, got {value}; use a positive value"
            )
