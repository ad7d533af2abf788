"""`text`: the user's own .txt/.jsonl files (a file, or a folder walked in sorted order).

There are no official splits: every document goes to test, val or train by its hash.
What a document is in a .txt file is the user's choice (`--doc-sep`): the whole file,
each blank-line paragraph, or the text between ``<|endoftext|>`` lines; a JSONL line's
`--text-field` is one document. Both settings are recorded in meta.json. Nothing is
downloaded, so without a local folder the text must be given with ``--source``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lumenlm.data import readers
from lumenlm.data.corpus import Corpus, DatasetSpec, OpenOptions, SourceFile, hash_route, rel_name
from lumenlm.errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl")
DOC_SEPS = ("file", "blank", "eot")
_UNITS = {
    "blank": "paragraphs (--doc-sep blank)",
    "eot": "documents (--doc-sep eot)",
    "file": "documents (--doc-sep file: one per file)",
}


def build(root: Path, options: OpenOptions) -> Corpus:
    """The .txt/.jsonl files at `root`, every document routed by hash."""
    doc_sep = options.doc_sep
    if doc_sep is None:  # a single .txt file is one book, not one document: use paragraphs
        doc_sep = "blank" if root.is_file() and root.suffix == ".txt" else "file"
    if doc_sep not in DOC_SEPS:
        raise DataError(f"unknown --doc-sep {doc_sep!r}; use one of {', '.join(DOC_SEPS)}")
    if root.is_file():
        paths = [root]
        base = root.parent
        if root.suffix not in TEXT_SUFFIXES:
            raise DataError(f"{root} is not a .txt or .jsonl file")
        if root.stat().st_size == 0:
            raise DataError(f"{root} is empty; pass a file with text in it")
    else:
        base = root
        paths = list(walk_text_files(root))
        if not paths:
            raise DataError(f"{root} holds no .txt or .jsonl files; point --source at your text")
    notes: list[str] = []
    empty = [p for p in paths if p.stat().st_size == 0]
    if empty and len(empty) == len(paths):
        raise DataError(
            f"every .txt/.jsonl file under {root} is empty; there is no text to prepare"
        )
    if empty:
        notes.append(f"skipped {len(empty)} empty file(s), e.g. {rel_name(empty[0], base)}")
    route = hash_route(options.val_ratio, options.test_ratio)
    files = [
        SourceFile(
            p,
            rel_name(p, base),
            _reader(p, options.text_field, doc_sep, options.errors),
            route,
            "text",
        )
        for p in paths
        if p not in empty
    ]
    rule = (
        f"by document hash: test {options.test_ratio:g}, val {options.val_ratio:g}, "
        f"train {1 - options.val_ratio - options.test_ratio:g}"
    )
    return Corpus(
        "text",
        root,
        files,
        rule,
        notes,
        unit=_UNITS[doc_sep],
        more_documents=(
            "split the text into more documents (--doc-sep blank or eot)",
            "add files",
        ),
        reader_settings={"text_field": options.text_field, "doc_sep": doc_sep},
    )


def _reader(p: Path, text_field: str, doc_sep: str, errors: str) -> Callable[[], Iterator[str]]:
    if p.suffix == ".jsonl":
        return lambda: readers.jsonl_documents(p, text_field, errors)
    if doc_sep == "blank":
        return lambda: readers.blank_line_documents(p, errors)
    if doc_sep == "eot":
        return lambda: readers.eot_documents(p, errors)
    return lambda: iter([readers.read_whole(p, errors)])


def walk_text_files(root: Path) -> Iterator[Path]:
    """.txt/.jsonl files under root in sorted order (hidden files and folders skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and fn.endswith(TEXT_SUFFIXES):
                yield Path(dirpath) / fn


SPEC = DatasetSpec(
    name="text",
    build=build,
    dirnames=("text",),
    expected="a .txt/.jsonl file or a folder of them",
    help="your own .txt/.jsonl files",
)
