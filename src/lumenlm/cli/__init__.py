"""The `lumenlm` command line: one entry point, one module per subcommand.

Each `lumenlm.cli.<name>` module exposes `register(subparsers, common)` which adds
its parser and sets `func` (through `cli.common.add_command`, with the arguments the
subcommands share in `cli.common`). Modules import heavy libraries (torch, tokenizers)
inside their `run` function so `lumenlm --help` stays fast. The CLI holds no
logic of its own: it parses arguments and calls the library.

User errors (`LumenError`) print one line and exit non-zero; any other exception
prints one line too, and the full traceback only with `--debug`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lumenlm.errors import LumenError, first_line

COMMANDS = [
    "presets",
    "prepare",
    "train",
    "runs",
    "eval",
    "generate",
    "chat",
    "serve",
    "export",
    "inspect",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand registered."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser = argparse.ArgumentParser(
        prog="lumenlm",
        description="Build small GPT-style language models from scratch, end to end.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module_name = f"lumenlm.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # subcommand not built yet
            raise
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LUMENLM_DEBUG") == "1"
    try:
        result = args.func(args)
        return int(result or 0)
    except LumenError as exc:
        if debug:
            raise
        print(f"lumenlm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lumenlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            raise
        first = first_line(exc, "")
        print(
            f"lumenlm {args.command}: error: {type(exc).__name__}: {first} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
