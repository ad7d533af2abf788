"""TinyStories: short synthetic stories separated by ``<|endoftext|>`` lines.

The official corpus has a train and a validation file; the validation stories are
halved by story hash into val and test. Partial pieces (``TinyStories-train*.txt``)
stand in for a missing official file, with a note. A validation file of Hugging Face
rows joined by blank lines has no reliable story boundaries and is read as running
text. Without any validation file, val and test are carved from train by story hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lumenlm.data import readers
from lumenlm.data.corpus import (
    Corpus,
    DatasetSpec,
    OpenOptions,
    SourceFile,
    hash_route,
    need_dir,
    rel_name,
)
from lumenlm.data.download import RemoteFile
from lumenlm.errors import DataError

_HF = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"


def build(root: Path, options: OpenOptions) -> Corpus:
    """The TinyStories corpus in `root` (official files, else partial pieces)."""
    need_dir(root, "tinystories")
    errors = options.errors
    notes: list[str] = []
    train_files = _official_or_pieces(
        root, "train", "train uses", " (not the official corpus)", notes
    )
    valid_files = _official_or_pieces(root, "valid", "val/test use", "", notes)
    if not train_files:
        raise DataError(
            f"no TinyStories train text in {root}; put TinyStories-train.txt (or "
            "TinyStories-train*.txt pieces) there"
        )

    def reader(p: Path) -> Callable[[], Iterator[str]]:
        return lambda: readers.eot_documents(p, errors)

    files = [
        SourceFile(p, rel_name(p, root), reader(p), (("train", 1.0),), "train") for p in train_files
    ]
    if valid_files:
        half = (("test", 0.5), ("val", 0.5))
        for p in valid_files:
            if ".hf-rows." in p.name:
                files.append(
                    SourceFile(
                        p,
                        rel_name(p, root),
                        _running_text_halves(p, errors),
                        None,
                        "validation (running text)",
                    )
                )
                notes.append(
                    f"{p.name}: story boundaries are ambiguous (HF rows joined by blank lines), "
                    "so it is used as running text: its first half (by blank-line blocks) is val, "
                    "the second half test, one document each"
                )
            else:
                files.append(SourceFile(p, rel_name(p, root), reader(p), half, "validation"))
        rule = "train = official train; val and test = the validation split in halves"
    else:
        route = hash_route(options.val_ratio, options.test_ratio)
        files = [SourceFile(f.path, f.name, f.reader, route, "train") for f in files]
        notes.append(
            f"no TinyStories validation file: val ({options.val_ratio:g}) and test "
            f"({options.test_ratio:g}) were carved from train by story hash"
        )
        rule = "carved from train by story hash"
    return Corpus("tinystories", root, files, rule, notes)


def _official_or_pieces(
    root: Path, split: str, uses: str, caveat: str, notes: list[str]
) -> list[Path]:
    """The official TinyStories file of `split`, else the partial pieces there (noted)."""
    for name in (f"TinyStories-{split}.txt", f"TinyStoriesV2-GPT4-{split}.txt"):
        if (root / name).is_file():
            return [root / name]
    pieces = sorted(p for p in root.glob(f"TinyStories*{split}*.txt") if p.is_file())
    if pieces:
        notes.append(
            f"TinyStories-{split}.txt is missing: {uses} the partial pieces "
            + ", ".join(p.name for p in pieces)
            + caveat
        )
    return pieces


def _running_text_halves(path: Path, errors: str) -> Callable[[], Iterator[tuple[str, str]]]:
    """Reader for text without reliable document boundaries: val = first half, test = second.

    The cut falls on a blank-line block boundary; each half is one document, so no
    end-of-text token is invented inside it.
    """

    def read() -> Iterator[tuple[str, str]]:
        blocks = list(readers.blank_line_documents(path, errors))  # held whole anyway
        half = (len(blocks) + 1) // 2
        for split, part in (("val", blocks[:half]), ("test", blocks[half:])):
            if part:
                yield split, "\n".join(part)

    return read


SPEC = DatasetSpec(
    name="tinystories",
    build=build,
    dirnames=("tinystories", "TinyStories"),
    remote=(
        RemoteFile("TinyStories-train.txt", f"{_HF}/TinyStories-train.txt"),
        RemoteFile("TinyStories-valid.txt", f"{_HF}/TinyStories-valid.txt"),
    ),
    expected="TinyStories-train.txt and TinyStories-valid.txt (or TinyStories-train*.txt pieces)",
)
