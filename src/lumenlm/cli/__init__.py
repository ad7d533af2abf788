"""The `lumenlm` command line: one entry point, one module per subcommand.

Each `lumenlm.cli.<name>` module exposes `register(subparsers, common)` which adds
its parser and sets `func` (through `cli.common.add_command`, with the arguments the
subcommands share in `cli.common`). Modules import heavy libraries (torch, tokenizers)
inside their `run` function so `lumenlm --help` stays fast. The CLI holds no
logic of its own: it parses arguments and calls the library.

Every failure is one line on stderr, `lumenlm <command>: error: <what>; <what to do>`,
and a non-zero exit; the traceback only with `--debug`. User errors (`LumenError`) carry
their own advice. Argument errors (a bad flag value, a missing argument) are one line
too, pointing at `--help`, instead of argparse's usage block (exit 2). Any other
exception is a bug or an environment problem the code did not foresee: its line says
so and says what to do (re-run with --debug and report it), and `OSError`/`MemoryError`
get advice of their own. The real fix for such a message is a `LumenError` at its source.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import keyword
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lumenlm import mkl_shim
from lumenlm.allocator import tune_malloc
from lumenlm.errors import LumenError, first_line

COMMANDS = [
    "presets",
    "prepare",
    "train",
    "finetune",
    "runs",
    "eval",
    "generate",
    "chat",
    "serve",
    "export",
    "import",
    "inspect",
    "reproduce",
]


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line that says where to look, not a usage
    block; subcommand parsers inherit the class (argparse creates them with it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand registered."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc malloc's defaults alone (also LUMENLM_MALLOC=system); by default "
        "lumenlm keeps freed memory mapped (mallopt) so each training or decoding step does "
        "not page-fault its temporaries back in: see lumenlm/allocator.py",
    )
    common.add_argument(
        "--system-mkl",
        action="store_true",
        help="leave MKL's kernel choice alone (also LUMENLM_MKL=system); by default, on an "
        "AMD CPU with AVX2, lumenlm re-runs itself once with a one-function shim preloaded "
        "(compiled with cc, cached) so that MKL uses its fast kernels there too (1.1-1.9x "
        "faster matrix products on a Zen 3 EPYC): see lumenlm/mkl_shim.py",
    )
    common.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores this "
        "process may use: affinity, cgroup CPU quota, physical cores, not hyperthreads)",
    )
    parser = OneLineParser(
        prog="lumenlm",
        description="Build small GPT-style language models from scratch, end to end.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        # a keyword command (`import`) lives in a module with a trailing underscore
        module_name = f"lumenlm.cli.{name}{'_' if keyword.iskeyword(name) else ''}"
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
    mkl = "not started as the lumenlm command"
    if argv is None and started_as_command():  # safe to run again from the start
        mkl = mkl_shim.setup(enabled=not getattr(args, "system_mkl", False))
    malloc = tune_malloc(enabled=not getattr(args, "system_malloc", False))
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LUMENLM_DEBUG") == "1"
    if debug:
        print(f"lumenlm: malloc: {malloc}; MKL shim: {mkl}", file=sys.stderr)
    try:
        from lumenlm.devices import configure_threads  # imports torch: not for --help

        configure_threads(getattr(args, "threads", None))
        result = args.func(args)
        return int(result or 0)
    except LumenError as exc:
        if debug:
            raise
        print(f"lumenlm {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lumenlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            raise
        print(f"lumenlm {args.command}: error: {unexpected_error_line(exc)}", file=sys.stderr)
        return 1


def started_as_command(argv0: str | None = None) -> bool:
    """Whether this process is the `lumenlm` console script or `python -m lumenlm`, so
    that running its command line again (the MKL shim's re-exec) repeats nothing but the
    command; a script of the user's that calls `main()` is not re-run."""
    p = Path(sys.argv[0] if argv0 is None else argv0)
    return p.name == "lumenlm" or (p.name == "__main__.py" and p.parent.name == "lumenlm")


def one_line(message: str) -> str:
    """`message` on one line (a stray newline in a message would break the contract)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


# OS errors that are the environment's, not a bug: what to do about each.
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or choose another output folder",
    errno.EDQUOT: "free some disk space or choose another output folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "choose a writable path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "check the path (a folder was given where a file is needed)",
    errno.EMFILE: "raise the open-files limit (ulimit -n) or use fewer workers",
}


def unexpected_error_line(exc: BaseException) -> str:
    """The one line for an exception that is not a `LumenError`: what happened and what
    to do. Out of memory and OS errors (disk full, permissions) are the environment's,
    with advice to match; anything else is unexpected: re-run with --debug and report it."""
    what = first_line(exc, "")
    if isinstance(exc, MemoryError):
        return (
            "out of memory; lower the sizes involved (--vocab-size, batch_size, "
            "context_length, --max-tokens) or use a machine with more memory"
        )
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}; {_OS_ADVICE[exc.errno]}"
    name = type(exc).__name__
    head = f"{name}: {what}" if what and what != name else name
    return f"{head} (unexpected; re-run with --debug for the traceback and report it)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
