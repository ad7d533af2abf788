"""The machinery of the bad-input table (tests/test_bad_input.py): its row type, the
setups that build bad inputs, the runner, the CLI-contract check and docs/ERRORS.md.

Kept apart from the table so the table stays a plain list of rows. (No tests here.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ERRORS.md"
REGENERATE = ".venv/bin/python tests/test_bad_input.py --write"


@dataclass(frozen=True)
class Workspace:
    """The shared fixtures the rows' placeholders name."""

    data: Path  # a tiny prepared dataset (make_dataset): train/val/test .bin + meta.json
    src: Path  # a small text corpus for `prepare text --source`
    model: Path  # a tiny model directory (tiny preset, untrained) with a tokenizer


@dataclass(frozen=True)
class Case:
    """One bad input: `argv` (placeholders {data} {src} {model} {here}), what it is in
    words, and a regex for the error line (after `lumenlm <command>: error: `)."""

    argv: str
    what: str
    expect: str
    setup: Callable[[Path, Workspace], None] | None = None
    todo: str = ""  # the message has no advice yet: who owns the fix

    @property
    def command(self) -> str:
        """The subcommand, or "" for errors of `lumenlm` itself."""
        from lumenlm.cli import COMMANDS

        first = shlex.split(self.argv)[0] if self.argv.strip() else ""
        return first if first in COMMANDS else ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.what.lower()).strip("-")
        return f"{self.command or 'lumenlm'}-{slug}"


# -- setups: each builds one bad input in the row's own folder ({here}) ----------------------


def meta_edit(**fields: Any) -> Callable[[Path, Workspace], None]:
    """{here}/data: a copy of {data} whose meta.json has `fields` set (a hand edit)."""

    def setup(here: Path, ws: Workspace) -> None:
        data = Path(shutil.copytree(ws.data, here / "data"))
        meta = json.loads((data / "meta.json").read_text())
        meta.update(fields)
        (data / "meta.json").write_text(json.dumps(meta, indent=2))

    return setup


def data_file(name: str, content: bytes | None) -> Callable[[Path, Workspace], None]:
    """{here}/data: a copy of {data} with file `name` replaced by `content` (None: removed)."""

    def setup(here: Path, ws: Workspace) -> None:
        data = Path(shutil.copytree(ws.data, here / "data"))
        if content is None:
            (data / name).unlink()
        else:
            (data / name).write_bytes(content)

    return setup


def write(name: str, content: str | bytes) -> Callable[[Path, Workspace], None]:
    """{here}/<name> with `content`."""

    def setup(here: Path, ws: Workspace) -> None:
        path = here / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def copy_src(here: Path, ws: Workspace) -> None:
    """{here}/corpus: a folder holding a copy of {src}."""
    (here / "corpus").mkdir()
    shutil.copy(ws.src, here / "corpus" / "stories.txt")


# -- running the rows ---------------------------------------------------------------------

# Advice: an imperative (not a flag: `--set` is no "set"), "one of", or "did you mean".
ADVICE = re.compile(
    r"(?<![-\w])(use|pass|give|re-?run|run (`|the |it )|set|choose|drop|add|lower|raise|start|"
    r"check|try|see|leave|upgrade|remove|fix|free|point|convert|put|install|rename)\b"
    r"|one of|did you mean",
    re.IGNORECASE,
)
# Lines that are not the error: notices, and prepare's `lumenlm: ` progress notes.
NOTE = re.compile(r"^(notice: |lumenlm: (?!error:))")


@dataclass(frozen=True)
class Result:
    code: int
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.strip() and not NOTE.match(x)]


def make_workspace(root: Path) -> Workspace:
    """Build the shared fixtures under `root` (a second or so on a CPU)."""
    import torch

    from data_helpers import write_stories
    from lumenlm.model import GPT
    from lumenlm.modelio import save_model
    from lumenlm.presets import get_preset
    from train_helpers import make_dataset

    data = make_dataset(root / "data", n_train=1500, n_val=300, tokenizer=True)
    src = root / "stories.txt"
    write_stories(src, n=60)
    torch.manual_seed(0)
    model = save_model(GPT(get_preset("tiny").model), root / "model", data / "tokenizer.json")
    return Workspace(data=data, src=src, model=model)


def run_case(case: Case, ws: Workspace, here: Path) -> Result:
    """Run one row through `lumenlm.cli.main` in this process; its exit code and stderr."""
    from lumenlm.cli import main

    here.mkdir(parents=True)
    if case.setup is not None:
        case.setup(here, ws)
    words = [
        w.format(data=ws.data, src=ws.src, model=ws.model, here=here)
        for w in shlex.split(case.argv)
    ]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(words)
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, err.getvalue())


@contextlib.contextmanager
def _quiet_env(root: Path) -> Iterator[None]:
    """While the rows run: no downloads, no debug tracebacks, and empty local-data and
    cache folders (so a message never depends on what this machine has)."""
    keys = ("LUMENLM_OFFLINE", "LUMENLM_DEBUG", "LUMENLM_DATA", "LUMENLM_CACHE")
    saved = {k: os.environ.get(k) for k in keys}
    for name in ("no-data", "no-cache"):
        (root / name).mkdir(exist_ok=True)
    os.environ.update(
        LUMENLM_OFFLINE="1",
        LUMENLM_DATA=str(root / "no-data"),
        LUMENLM_CACHE=str(root / "no-cache"),
    )
    os.environ.pop("LUMENLM_DEBUG", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_all(cases: Sequence[Case], root: Path) -> dict[str, Result]:
    """Every row's result, by `Case.id` (fixtures and rows' folders under `root`)."""
    ws = make_workspace(root / "ws")
    with _quiet_env(root):
        return {case.id: run_case(case, ws, root / "cases" / case.id) for case in cases}


def check(case: Case, result: Result) -> None:
    """The CLI contract for one row (assertion messages show the whole stderr)."""
    shown = f"{case.argv!r} gave exit {result.code} and stderr:\n{result.stderr}"
    assert result.code != 0, shown
    assert "Traceback" not in result.stderr, shown
    assert len(result.lines) == 1, shown
    line = result.lines[0]
    prefix = f"lumenlm {case.command}: error: " if case.command else "lumenlm: error: "
    assert line.startswith(prefix), shown
    assert re.search(case.expect, line), f"expected /{case.expect}/ in:\n{line}"
    message = line[len(prefix) :]
    if case.todo:
        assert not ADVICE.search(message), f"{case.id} gives advice now: drop its todo\n{line}"
    else:
        assert ADVICE.search(message), f"no advice (what to do) in:\n{line}"


# -- docs/ERRORS.md ----------------------------------------------------------------------


def normalize(text: str, root: Path) -> str:
    """Temporary paths made stable: the shared fixtures as their placeholders ({data},
    {src}, {model}), each row's own folder as `TMP`."""
    for r in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
        text = text.replace(r, "TMP")
    for name, placeholder in (("data", "{data}"), ("stories.txt", "{src}"), ("model", "{model}")):
        text = re.sub(rf"TMP/ws/{re.escape(name)}\b", placeholder, text)
    text = re.sub(r"TMP/cases/[^/\s'\"`;:)]+", "TMP", text)
    # argparse quotes the choices before Python 3.12.8 and not after: show them unquoted
    return re.sub(r"\(choose from ([^)]*)\)", lambda m: m.group(0).replace("'", ""), text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_doc(cases: Sequence[Case], results: dict[str, Result], root: Path) -> str:
    """docs/ERRORS.md from the rows and what they printed."""
    from lumenlm.cli import COMMANDS

    order = {name: i for i, name in enumerate(["", *COMMANDS])}
    rows = sorted(cases, key=lambda c: order.get(c.command, len(order)))
    out = [
        "# Error messages",
        "",
        "What `lumenlm` prints for bad input: one line on stderr, `lumenlm <command>: error: "
        "<what is wrong>; <what to do>`, and a non-zero exit status (`--debug` adds the "
        "traceback). Any other failure says it is unexpected and asks for `--debug` and a "
        "report.",
        "",
        f"Generated from the rows of `tests/test_bad_input.py` (`{REGENERATE}`); the test "
        "fails when this page is out of date. `TMP` stands for a temporary folder, "
        "`{data}` for a prepared dataset, `{src}` for a text corpus, `{model}` for a model "
        "directory.",
        "",
        "| command | input | message |",
        "| --- | --- | --- |",
    ]
    for case in rows:
        line = results[case.id].lines[0] if results[case.id].lines else ""
        argv = normalize(f"lumenlm {case.argv}".strip().replace("{here}", "TMP"), root)
        out.append(
            f"| {case.command or '(none)'} | {_cell(case.what)}: `{_cell(argv)}` "
            f"| {_cell(normalize(line, root))} |"
        )
    return "\n".join(out) + "\n"


def script(cases: Sequence[Case], argv: list[str]) -> int:
    """`--write`: regenerate docs/ERRORS.md from `cases`; `--show`: print every row's stderr."""
    if argv not in (["--write"], ["--show"]):
        print("usage: python tests/test_bad_input.py --write | --show", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # as the tests run (tests/conftest.py)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = run_all(cases, root)
        if argv == ["--show"]:
            for case in cases:
                r = results[case.id]
                print(f"{case.id} [exit {r.code}]\n    " + "\n    ".join(r.stderr.splitlines()))
            return 0
        DOC.write_text(render_doc(cases, results, root), encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)} ({len(cases)} rows)")
    return 0
