"""What a dataset is to `prepare`: a `DatasetSpec` (where its text lives, how to open it)
and the `Corpus` its builder returns.

A corpus is a list of files, each with a reader (its document layout) and a *route*
that says which split its documents go to. Official splits are used where they exist;
a missing split is carved out of another one by document hash and the corpus carries
a note saying so, which `prepare` prints and records in meta.json. Everything that
`prepare` needs to know about a dataset is a field here, so `prepare` never asks for a
dataset by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumenlm.data.download import RemoteFile
from lumenlm.data.split import unit_hash
from lumenlm.errors import DataError

# A route: ((split, share), ...) with shares summing to 1; a document goes to the
# first split whose cumulative share exceeds the document's hash in [0, 1).
Route = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class OpenOptions:
    """The `prepare` settings a builder may use; each builder ignores what it has no use for."""

    val_ratio: float
    test_ratio: float
    errors: str = "strict"  # non-UTF-8 bytes: "strict" or "replace"
    text_field: str = "text"  # JSONL field holding the text
    doc_sep: str | None = None  # documents in .txt files (None: the builder's default)


# A builder opens a located folder (or file) as a `Corpus`; it reads no text yet,
# except what it must to draw split boundaries (e.g. line counts).
Builder = Callable[[Path, OpenOptions], "Corpus"]


@dataclass(frozen=True)
class DatasetSpec:
    """A named corpus: its builder, folders to look for, files to download, defaults."""

    name: str
    build: Builder
    dirnames: tuple[str, ...]  # folder names tried under $LUMENLM_DATA, first one in hints
    expected: str  # which files a local folder needs (for error messages)
    remote: tuple[RemoteFile, ...] = ()  # none: the text must be given (--source)
    help: str = ""  # a few words for `lumenlm prepare --help`, when the name is not enough
    whitespace: str = "tidy"
    val_ratio: float = 0.05
    test_ratio: float = 0.05
    known_sha256: dict[str, str] = field(default_factory=dict)  # local file name -> official


@dataclass
class SourceFile:
    """One input file: how to read it (`reader`) and where its documents go (`route`)."""

    path: Path
    name: str  # path relative to the corpus root, for meta.json (no absolute paths)
    reader: Callable[[], Iterator[Any]]  # texts, or (split, text) pairs when route is None
    route: Route | None  # None: the reader yields (split, text) pairs itself
    role: str  # e.g. "official train", "train piece"


@dataclass
class Corpus:
    """A located corpus: its files, the rule that assigns splits, and notes for the user."""

    name: str
    root: Path
    files: list[SourceFile]
    split_rule: str
    notes: list[str] = field(default_factory=list)
    fraction_by_block: bool = False  # --fraction keeps blocks of each (single) document
    # what a document is, for "only N <unit> in ..." and the ways to get more of them
    unit: str = "documents"
    more_documents: tuple[str, ...] = ("add documents",)
    # reader settings that shaped the documents, recorded in meta.json's source
    reader_settings: dict[str, str] = field(default_factory=dict)
    # set by `open_corpus` from the spec and the run's settings:
    origin: str = ""  # "--source", "$LUMENLM_DATA", "cache" or "download"
    carve_seed: int = 0
    val_ratio: float = 0.0
    test_ratio: float = 0.0
    urls: list[str] = field(default_factory=list)  # public home of downloaded files
    known_sha256: dict[str, str] = field(default_factory=dict)  # file name -> official digest

    def documents(self) -> Iterator[tuple[str, str, str]]:
        """(file name, split, raw text) for every document, in file order."""
        for f in self.files:
            if f.route is None:
                for split, text in f.reader():
                    yield f.name, split, text
                continue
            for text in f.reader():
                yield f.name, route_document(text, f.route, self.carve_seed), text


def route_document(text: str, route: Route, seed: int = 0) -> str:
    """The split a document goes to under `route` (deterministic, by hash of the text)."""
    if len(route) == 1:
        return route[0][0]
    u = unit_hash(text, "split", seed)
    acc = 0.0
    for split, share in route:
        acc += share
        if u < acc:
            return split
    return route[-1][0]


def hash_route(val_ratio: float, test_ratio: float) -> Route:
    """Every document by hash: test, val, then the rest to train."""
    return (("test", test_ratio), ("val", val_ratio), ("train", 1.0 - val_ratio - test_ratio))


def need_dir(root: Path, name: str) -> None:
    """A builder whose dataset is a folder of files refuses a single file as `--source`."""
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder; {name} --source must be the folder holding its files"
        )


def rel_name(path: Path, root: Path) -> str:
    """`path` relative to `root` (POSIX), else its bare name: never an absolute path."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
