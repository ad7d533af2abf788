"""The config fields' documentation, read back from their attribute docstrings.

Each `ModelConfig` / `TrainConfig` field is documented by the string literal right
under it (the litgpt `Config` style), which Python does not keep at runtime, so it is
read from the source with `ast`. That makes the source the one place a field is
explained: `lumenlm presets --show` and `lumenlm train --help` render from here and
cannot drift from it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from lumenlm.config.model_config import ModelConfig
from lumenlm.config.train_config import TrainConfig

SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig}
"""The `--set` sections (`model.KEY`, `train.KEY`) and the config class of each."""

WIDTH = 100
"""Line width of the rendered text."""


@dataclass(frozen=True)
class FieldDoc:
    """One config field: its name, annotation, default and docstring."""

    name: str
    type: str
    """The annotation as written, e.g. "int | None" or "Schedule"."""
    default: Any
    """The default value (a `default_factory` called), or `dataclasses.MISSING`."""
    doc: str
    """The attribute docstring on one line (whitespace collapsed); "" when absent."""
    choices: tuple[Any, ...] = ()
    """The allowed values of a `Literal`-typed field; () for the others."""

    @property
    def summary(self) -> str:
        """The docstring's first sentence."""
        end = re.search(r"\.\s+(?![a-z])", self.doc)
        return self.doc[: end.start() + 1] if end else self.doc


@functools.cache
def attribute_docstrings(cls: type) -> dict[str, str]:
    """{field name: docstring} for the string literals right under `cls`'s annotated
    fields, whitespace collapsed to one line; {} when the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (frozen app, REPL class)
        return {}
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def field_docs(cls: type) -> tuple[FieldDoc, ...]:
    """Name, annotation, default, docstring and choices of each field of dataclass `cls`,
    in declaration order."""
    docs = attribute_docstrings(cls)
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        hint = hints.get(f.name)
        choices = get_args(hint) if get_origin(hint) is Literal else ()
        out.append(FieldDoc(f.name, str(f.type), default, docs.get(f.name, ""), choices))
    return tuple(out)


def _wrap(text: str, indent: int) -> list[str]:
    """`text` wrapped to `WIDTH` for a column starting at `indent` (40 columns at least)."""
    width = max(40, WIDTH - indent)
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def describe_set_keys() -> str:
    """Every `--set` key with its one-sentence meaning, a section per config, for help text.

    Plain lines, already wrapped to `WIDTH`: meant for an argparse epilog printed with
    `RawDescriptionHelpFormatter`.
    """
    lines = [
        "config keys for --set KEY=VALUE (model.KEY or train.KEY; a bare KEY is looked up",
        "in both; write null for None; `lumenlm presets --show NAME` shows a preset's values):",
    ]
    width = max(len(d.name) for cls in SECTIONS.values() for d in field_docs(cls)) + 2
    for section, cls in SECTIONS.items():
        lines.append(f"{section}.KEY:")
        for d in field_docs(cls):
            first, *rest = _wrap(d.summary, 2 + width)
            lines.append(f"  {d.name:<{width}}{first}".rstrip())
            lines += [" " * (2 + width) + more for more in rest]
    return "\n".join(lines)


def commented_yaml(section: str, config: Any) -> str:
    """`section:` and the fields of dataclass `config` as a YAML block, each value
    followed by its docstring as a comment, so the text still loads with `yaml.safe_load`.

    Values line up in one column and docstrings in the next; a long docstring continues
    on comment-only lines below its key.
    """
    import yaml

    items = field_docs(type(config))
    entries = []
    for d in items:
        value = getattr(config, d.name)
        text = yaml.safe_dump({d.name: value}, width=10**6).rstrip("\n")
        entries.append(("  " + text, d.doc))
    column = max(len(line) for line, _ in entries) + 2
    lines = [f"{section}:"]
    for line, doc in entries:
        first, *rest = _wrap(doc, column + 2)
        lines.append(f"{line:<{column}}# {first}")
        lines += [f"{'':<{column}}# {more}" for more in rest]
    return "\n".join(lines)
