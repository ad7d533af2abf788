"""The WikiText layout, shared by wikitext-2 and wikitext-103 (not a dataset itself).

Both ship wiki.train.raw / wiki.valid.raw / wiki.test.raw, in a zip under a
``wikitext-N-raw/`` folder, with articles that start at top-level ``" = Title = "``
lines. Each file is an official split. When some are missing, the ones that are there
still count, and a missing split is carved out of another file by article hash, with a
note that says so (and that the results are not comparable with the official splits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lumenlm.data import readers
from lumenlm.data.corpus import Builder, Corpus, OpenOptions, Route, SourceFile, need_dir, rel_name
from lumenlm.errors import DataError

# split -> the official file holding it, in the order the files are read
WIKI_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKI_EXPECTED = ", ".join(WIKI_FILES.values())


def zip_members(subdir: str) -> dict[str, str]:
    """The zip member -> local name map of an official WikiText raw zip."""
    return {f"{subdir}/{n}": n for n in WIKI_FILES.values()}


def wikitext_builder(name: str, title: str, subdir: str, train_hint: str) -> Builder:
    """The builder of one WikiText corpus.

    `name` is the dataset's name, `title` its display name ("WikiText-2"), `subdir` the
    folder its zip extracts to (also accepted inside a --source folder), and `train_hint`
    ends the note printed when wiki.train.raw is missing (appended as is: what to add).
    """

    def build(root: Path, options: OpenOptions) -> Corpus:
        need_dir(root, name)
        base = root / subdir if (root / subdir).is_dir() else root
        paths = {s: base / f for s, f in WIKI_FILES.items()}
        have = {s: p for s, p in paths.items() if p.is_file()}
        if not have:
            raise DataError(f"no {title} files in {root}; put {WIKI_EXPECTED} there")
        routes, notes = _routes(have, paths, options.val_ratio, options.test_ratio, train_hint)

        def reader(p: Path) -> Callable[[], Iterator[str]]:
            return lambda: readers.wikitext_documents(p, options.errors)

        files = [
            SourceFile(p, rel_name(p, root), reader(p), routes[s], f"official {s}")
            for s, p in have.items()
            if s in routes
        ]
        rule = "official splits" if not notes else "official splits where present; see notes"
        return Corpus(name, root, files, rule, notes)

    return build


def _routes(
    have: dict[str, Path],
    paths: dict[str, Path],
    val_ratio: float,
    test_ratio: float,
    train_hint: str,
) -> tuple[dict[str, Route], list[str]]:
    """Where each present file's articles go, and the notes on what had to be carved."""
    notes: list[str] = []
    routes: dict[str, Route] = {s: ((s, 1.0),) for s in have}
    if "train" not in have:
        donor = "val" if "val" in have else "test"
        parts: list[tuple[str, float]] = [("val", val_ratio)]
        if "test" not in have or donor == "test":
            parts.insert(0, ("test", test_ratio))
        parts.append(("train", 1.0 - sum(s for _, s in parts)))
        if donor == "test":  # only the test file exists: carve everything from it
            routes.pop("val", None)
        routes[donor] = tuple(parts)
        official = [paths[s].name for s in have if s != donor]
        carved = "train, val and test" if donor == "test" else "train and val"
        notes.append(
            f"wiki.train.raw is missing: {carved} were carved from {paths[donor].name} "
            f"by article hash (val share {val_ratio:g}"
            + (f", test share {test_ratio:g})" if donor == "test" else ")")
            + (f"; test is the official {', '.join(official)}" if official else "")
            + "; results are NOT comparable with models trained on the official train split"
            + train_hint
        )
        return routes, notes
    for s in ("val", "test"):
        if s not in have:
            ratio = val_ratio if s == "val" else test_ratio
            routes["train"] = (
                (s, ratio),
                *((k, v - ratio) if k == "train" else (k, v) for k, v in routes["train"]),
            )
            notes.append(
                f"{paths[s].name} is missing: {s} was carved from train by article "
                f"hash ({ratio:g} of its articles)"
            )
    return routes, notes
