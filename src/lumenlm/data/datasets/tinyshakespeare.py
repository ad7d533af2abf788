"""Tiny Shakespeare (karpathy/char-rnn): one 1.1 MB file of plays, no documents.

Each split is one contiguous run of lines (train first, then val, then test), so no
speech is cut between splits; `--fraction` keeps a share of its blank-line blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lumenlm.data import readers
from lumenlm.data.corpus import Corpus, DatasetSpec, OpenOptions, SourceFile
from lumenlm.data.download import RemoteFile
from lumenlm.data.split import contiguous_bounds
from lumenlm.errors import DataError

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def build(root: Path, options: OpenOptions) -> Corpus:
    """`root`/input.txt (or `root` itself when it is a file), cut into three line runs."""
    errors = options.errors
    path = root if root.is_file() else root / "input.txt"
    if not path.is_file():
        raise DataError(f"no input.txt in {root}; put the tinyshakespeare input.txt there")
    n_lines = readers.count_lines(path, errors)
    a, b = contiguous_bounds(n_lines, options.val_ratio, options.test_ratio)

    def reader() -> Iterator[tuple[str, str]]:
        # No documents in this corpus: each split is one contiguous run of lines.
        parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for i, line in enumerate(readers.iter_lines(path, errors)):
            parts["train" if i < a else "val" if i < b else "test"].append(line)
        for split, lines in parts.items():
            if lines:
                yield split, "".join(lines)

    rule = (
        f"contiguous by line: lines [0, {a}) train, [{a}, {b}) val, [{b}, {n_lines}) test; "
        "each split is one document"
    )
    return Corpus(
        "tinyshakespeare",
        root,
        [SourceFile(path, path.name, reader, None, "whole corpus")],
        rule,
        fraction_by_block=True,
    )


SPEC = DatasetSpec(
    name="tinyshakespeare",
    build=build,
    dirnames=("tinyshakespeare", "tiny-shakespeare", "shakespeare"),
    remote=(
        RemoteFile(
            "input.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256=SHA256,
            size=1_115_394,
        ),
    ),
    expected="input.txt (karpathy/char-rnn tinyshakespeare)",
    known_sha256={"input.txt": SHA256},
)
