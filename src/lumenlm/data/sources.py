"""The dataset registry: where each corpus's text lives and how it maps to splits.

`open_corpus` finds the text (``--source PATH``, then ``$LUMENLM_DATA/<name>/``,
then the download cache, then a download when online) and returns a `Corpus`:
a list of files, each with a reader (its document layout) and a *route* that says
which split its documents go to. Official splits are used where they exist; a
missing split is carved out of another one by document hash and the corpus
carries a note saying so, which `prepare` prints and records in meta.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumenlm.data import readers
from lumenlm.data.split import contiguous_bounds, unit_hash
from lumenlm.errors import DataError

DATASETS = ("wikitext-2", "tinystories", "tinyshakespeare", "text")
TEXT_SUFFIXES = (".txt", ".jsonl")
DOC_SEPS = ("file", "blank", "eot")

# A route: ((split, share), ...) with shares summing to 1; a document goes to the
# first split whose cumulative share exceeds the document's hash in [0, 1).
Route = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class RemoteFile:
    """A file at a dataset's public home. `members` extracts files from a zip."""

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    members: dict[str, str] = field(default_factory=dict)  # member path -> local name
    member_sha256: dict[str, str] = field(default_factory=dict)  # local name -> sha256


@dataclass(frozen=True)
class DatasetSpec:
    """A named corpus: folders to look for, files to download, default settings."""

    name: str
    dirnames: tuple[str, ...]
    remote: tuple[RemoteFile, ...]
    expected: str  # which files a local folder needs (for error messages)
    whitespace: str = "tidy"
    val_ratio: float = 0.05
    test_ratio: float = 0.05
    known_sha256: dict[str, str] = field(default_factory=dict)


WIKITEXT_SHA256 = {
    "wiki.train.raw": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_HF_TS = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"

SPECS: dict[str, DatasetSpec] = {
    "wikitext-2": DatasetSpec(
        name="wikitext-2",
        dirnames=("wikitext-2", "wikitext-2-raw", "wikitext-2-raw-v1"),
        remote=(
            RemoteFile(
                "wikitext-2-raw-v1.zip",
                "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",
                sha256="ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
                size=4_721_645,
                members={f"wikitext-2-raw/{n}": n for n in WIKITEXT_SHA256},
                member_sha256=WIKITEXT_SHA256,
            ),
        ),
        expected="wiki.train.raw, wiki.valid.raw, wiki.test.raw (WikiText-2 raw v1)",
        whitespace="keep",
        val_ratio=0.1,
        test_ratio=0.1,
        known_sha256=WIKITEXT_SHA256,
    ),
    "tinystories": DatasetSpec(
        name="tinystories",
        dirnames=("tinystories", "TinyStories"),
        remote=(
            RemoteFile("TinyStories-train.txt", f"{_HF_TS}/TinyStories-train.txt"),
            RemoteFile("TinyStories-valid.txt", f"{_HF_TS}/TinyStories-valid.txt"),
        ),
        expected="TinyStories-train.txt and TinyStories-valid.txt (or TinyStories-train*.txt pieces)",
    ),
    "tinyshakespeare": DatasetSpec(
        name="tinyshakespeare",
        dirnames=("tinyshakespeare", "tiny-shakespeare", "shakespeare"),
        remote=(
            RemoteFile(
                "input.txt",
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                sha256=TINYSHAKESPEARE_SHA256,
                size=1_115_394,
            ),
        ),
        expected="input.txt (karpathy/char-rnn tinyshakespeare)",
        known_sha256={"input.txt": TINYSHAKESPEARE_SHA256},
    ),
    "text": DatasetSpec(
        name="text",
        dirnames=("text",),
        remote=(),
        expected=".txt or .jsonl files",
    ),
}


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
    origin: str  # "--source", "$LUMENLM_DATA", "cache" or "download" (meta.json: cache -> download)
    files: list[SourceFile]
    split_rule: str
    notes: list[str] = field(default_factory=list)
    carve_seed: int = 0
    val_ratio: float = 0.0
    test_ratio: float = 0.0
    doc_sep: str = ""  # text: the document separator actually used
    fraction_by_block: bool = False  # --fraction keeps blocks of each (single) document
    urls: list[str] = field(default_factory=list)  # public home of downloaded files

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
    return (("test", test_ratio), ("val", val_ratio), ("train", 1.0 - val_ratio - test_ratio))


# ----------------------------------------------------------------------------- locating


def data_root() -> Path | None:
    """`$LUMENLM_DATA` if set (the shared folder of local dataset copies)."""
    value = os.environ.get("LUMENLM_DATA")
    return Path(value).expanduser() if value else None


def locate(
    name: str, source: str | os.PathLike[str] | None, *, offline: bool, data_url: str | None
) -> tuple[Path, str]:
    """Find the folder (or file) holding a dataset's text; download it if allowed."""
    from lumenlm.data import download

    spec = get_spec(name)
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"--source {path} does not exist; pass an existing file or folder")
        return path, "--source"
    root = data_root()
    if root is not None:
        for dirname in spec.dirnames:
            if (root / dirname).is_dir():
                return root / dirname, "$LUMENLM_DATA"
    if name == "text":
        raise DataError(
            "dataset 'text' needs --source PATH (a .txt/.jsonl file or a folder of them)"
        )
    cached = download.cache_dir() / name
    if download.is_complete(spec, cached):
        return cached, "cache"
    where = f"$LUMENLM_DATA/{spec.dirnames[0]}/" if root is None else f"{root / spec.dirnames[0]}/"
    if offline:
        raise DataError(
            f"no local copy of {name} and offline: put {spec.expected} in {where} "
            "or pass --source DIR"
        )
    download.fetch_dataset(spec, cached, base_url=data_url, hint=where)
    return cached, "download"


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SPECS[name]


# ----------------------------------------------------------------------------- corpora


def open_corpus(
    name: str,
    root: Path,
    origin: str,
    *,
    val_ratio: float,
    test_ratio: float,
    seed: int = 0,
    text_field: str = "text",
    doc_sep: str | None = None,
    errors: str = "strict",
) -> Corpus:
    """Build the `Corpus` for a located dataset (no text is read yet, except line counts)."""
    builders = {
        "wikitext-2": _wikitext,
        "tinystories": _tinystories,
        "tinyshakespeare": _tinyshakespeare,
        "text": _text,
    }
    corpus = builders[name](
        root,
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        text_field=text_field,
        doc_sep=doc_sep,
        errors=errors,
    )
    corpus.origin = origin
    corpus.carve_seed = seed
    if origin in ("cache", "download"):
        corpus.urls = [r.url for r in get_spec(name).remote]
    return corpus


def _need_dir(root: Path, name: str) -> None:
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder; {name} --source must be the folder holding its files"
        )


def _wikitext(
    root: Path, *, val_ratio: float, test_ratio: float, errors: str, **_: object
) -> Corpus:
    _need_dir(root, "wikitext-2")
    base = root / "wikitext-2-raw" if (root / "wikitext-2-raw").is_dir() else root
    paths = {
        s: base / f"wiki.{f}.raw"
        for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))
    }
    have = {s: p for s, p in paths.items() if p.is_file()}
    if not have:
        raise DataError(
            f"no WikiText-2 files in {root}; put wiki.train.raw, wiki.valid.raw, wiki.test.raw there"
        )

    def reader(p: Path) -> Callable[[], Iterator[str]]:
        return lambda: readers.wikitext_documents(p, errors)

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
            + "; results are NOT comparable with models trained on the official train split "
            "(36,718 lines); add wiki.train.raw (sha256 6707892f...) to reproduce the Lumiere card"
        )
    else:
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
    files = [
        SourceFile(p, _rel(p, root), reader(p), routes[s], f"official {s}")
        for s, p in have.items()
        if s in routes
    ]
    rule = "official splits" if not notes else "official splits where present; see notes"
    return Corpus("wikitext-2", root, "", files, rule, notes)


def _official_or_pieces(
    root: Path, split: str, uses: str, caveat: str, notes: list[str]
) -> list[Path]:
    """The official TinyStories file of `split`, else the partial pieces there (noted)."""
    official = _first_existing(
        root, [f"TinyStories-{split}.txt", f"TinyStoriesV2-GPT4-{split}.txt"]
    )
    if official:
        return [official]
    pieces = sorted(p for p in root.glob(f"TinyStories*{split}*.txt") if p.is_file())
    if pieces:
        notes.append(
            f"TinyStories-{split}.txt is missing: {uses} the partial pieces "
            + ", ".join(p.name for p in pieces)
            + caveat
        )
    return pieces


def _tinystories(
    root: Path, *, val_ratio: float, test_ratio: float, errors: str, **_: object
) -> Corpus:
    _need_dir(root, "tinystories")
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
        SourceFile(p, _rel(p, root), reader(p), (("train", 1.0),), "train") for p in train_files
    ]
    if valid_files:
        half = (("test", 0.5), ("val", 0.5))
        for p in valid_files:
            if ".hf-rows." in p.name:
                files.append(
                    SourceFile(
                        p,
                        _rel(p, root),
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
                files.append(SourceFile(p, _rel(p, root), reader(p), half, "validation"))
        rule = "train = official train; val and test = the validation split in halves"
    else:
        files = [
            SourceFile(f.path, f.name, f.reader, hash_route(val_ratio, test_ratio), "train")
            for f in files
        ]
        notes.append(
            f"no TinyStories validation file: val ({val_ratio:g}) and test ({test_ratio:g}) "
            "were carved from train by story hash"
        )
        rule = "carved from train by story hash"
    return Corpus("tinystories", root, "", files, rule, notes)


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


def _tinyshakespeare(
    root: Path, *, val_ratio: float, test_ratio: float, errors: str, **_: object
) -> Corpus:
    path = root if root.is_file() else root / "input.txt"
    if not path.is_file():
        raise DataError(f"no input.txt in {root}; put the tinyshakespeare input.txt there")
    n_lines = readers.count_lines(path, errors)
    a, b = contiguous_bounds(n_lines, val_ratio, test_ratio)

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
        "",
        [SourceFile(path, path.name, reader, None, "whole corpus")],
        rule,
        [],
        fraction_by_block=True,
    )


def _text(
    root: Path,
    *,
    val_ratio: float,
    test_ratio: float,
    text_field: str,
    doc_sep: str | None,
    errors: str,
    **_: object,
) -> Corpus:
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
        notes.append(f"skipped {len(empty)} empty file(s), e.g. {_rel(empty[0], base)}")
    route = hash_route(val_ratio, test_ratio)
    files = []
    for p in paths:
        if p in empty:
            continue
        files.append(
            SourceFile(
                p, _rel(p, base), _text_reader(p, text_field, doc_sep, errors), route, "text"
            )
        )
    rule = (
        f"by document hash: test {test_ratio:g}, val {val_ratio:g}, "
        f"train {1 - val_ratio - test_ratio:g}"
    )
    return Corpus("text", root, "", files, rule, notes, doc_sep=doc_sep)


def _text_reader(
    p: Path, text_field: str, doc_sep: str, errors: str
) -> Callable[[], Iterator[str]]:
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


def _first_existing(root: Path, names: list[str]) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
