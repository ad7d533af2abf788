"""`prepare_dataset`: text -> cleaned documents -> splits -> tokenizer -> token files + meta.json.

Everything is built in a temporary folder next to `out` and renamed into place at
the end, so a failure (bad input, Ctrl-C) leaves nothing half-written. The output
is a pure function of the inputs and the settings: no timestamps, no absolute
paths, deterministic tokenizer training, so two runs give byte-identical files.
Nothing here asks for a dataset by name: what differs between datasets (their notes,
what a document is, the settings to record) comes on the `Corpus` their spec builds.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumenlm.data.clean import CleanConfig
from lumenlm.data.corpus import Corpus, OpenOptions
from lumenlm.data.datasets import get_spec
from lumenlm.data.documents import DocumentFilter, heldout_digests
from lumenlm.data.encode import check_workers
from lumenlm.data.locate import locate, open_corpus
from lumenlm.data.log import info, warn
from lumenlm.data.split import SPLITS, check_fraction, check_ratios, check_seed
from lumenlm.data.tokenizer import (
    DEFAULT_SPECIALS,
    check_min_frequency,
    check_special_tokens,
    check_vocab_size,
    eot_id,
    load_tokenizer,
    pad_id,
    save_tokenizer,
    special_token_ids,
    train_tokenizer,
)
from lumenlm.data.tokens import DTYPES, TokenWriter, check_dtype, dtype_for_vocab, write_meta
from lumenlm.errors import DataError
from lumenlm.fsutil import pid_alive, replace_dir
from lumenlm.signals import sigterm_raises


@dataclass
class PrepareConfig:
    """Every setting of `lumenlm prepare` (see `lumenlm prepare --help`)."""

    dataset: str
    out: Path
    source: str | None = None
    vocab_size: int = 8000
    min_frequency: int = 2
    special_tokens: Sequence[str] = field(default_factory=lambda: list(DEFAULT_SPECIALS))
    tokenizer: str | None = None  # reuse this tokenizer.json instead of training
    fraction: float = 1.0
    text_field: str = "text"
    doc_sep: str | None = None  # None: "blank" for a single .txt --source, else "file"
    val_ratio: float | None = None  # None: the dataset's default
    test_ratio: float | None = None
    dedup: bool = False
    normalization: str = "NFC"
    whitespace: str | None = None  # None: the dataset's default ("keep" for WikiText raw)
    errors: str = "strict"
    seed: int = 0
    workers: int | None = None
    dtype: str = "auto"
    force: bool = False
    offline: bool = False
    data_url: str | None = None
    progress: bool = True


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    content_tokens: int = 0
    tokens: int = 0
    sha256: str = ""


def prepare_dataset(config: PrepareConfig) -> dict[str, Any]:
    """Prepare a dataset into `config.out`; returns the meta.json contents."""
    from lumenlm.data.encode import set_threads

    check_settings(config)
    out = Path(config.out)
    for flag, path in (("--source", config.source), ("--tokenizer", config.tokenizer)):
        if path is not None:
            _check_not_inside(out, Path(path), flag)
    _check_out(out, config.force)
    if config.tokenizer is not None:
        load_tokenizer(
            config.tokenizer
        )  # a missing or bad --tokenizer fails before the text is read
    set_threads(config.workers)
    corpus, clean_cfg = open_configured_corpus(config)
    _check_not_inside(out, corpus.root, "the dataset folder")
    for note in corpus.notes:
        warn(note)
    check_splits_feasible(corpus, config)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with sigterm_raises():  # SIGTERM runs the cleanup below (exit status 143)
        try:
            meta = _build(config, corpus, clean_cfg, tmp)
            replace_dir(tmp, out, out.parent / f".{out.name}.old-{os.getpid()}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return meta


def _remove_stale_tmp(out: Path) -> None:
    """Remove `.OUT.tmp-PID` / `.OUT.old-PID` folders left by runs that were killed."""
    for kind in ("tmp", "old"):
        for p in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and p.is_dir() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _check_not_inside(out: Path, path: Path, what: str) -> None:
    """`--out` must not be, or contain, an input (replacing it would delete that input)."""
    o, p = out.expanduser().resolve(), path.expanduser().resolve()
    if o == p or o in p.parents:
        raise DataError(
            f"--out {out} is or contains {what} {path}; choose an output folder outside it"
        )


def check_settings(config: PrepareConfig) -> None:
    """Every numeric and choice setting, before any file is read: one-line `DataError`s
    that name the flag, its allowed range and a value to use."""
    spec = get_spec(config.dataset)
    val_ratio = spec.val_ratio if config.val_ratio is None else config.val_ratio
    test_ratio = spec.test_ratio if config.test_ratio is None else config.test_ratio
    check_ratios(val_ratio, test_ratio)
    check_fraction(config.fraction)
    check_seed(config.seed)
    check_workers(config.workers)
    if config.errors not in ("strict", "replace"):
        raise DataError(
            f"--errors must be strict or replace, got {config.errors!r}; use one of those"
        )
    if config.dtype != "auto" and config.dtype not in DTYPES:
        raise DataError(
            f"--dtype must be auto, uint16 or uint32, got {config.dtype!r}; use one of those"
        )
    if config.tokenizer is None:
        check_special_tokens(config.special_tokens)
        check_vocab_size(config.vocab_size, config.special_tokens)
        check_min_frequency(config.min_frequency)
        if config.dtype != "auto":  # the trained vocab is at most the requested one
            check_dtype(config.dtype, config.vocab_size)


def open_configured_corpus(config: PrepareConfig) -> tuple[Corpus, CleanConfig]:
    """Check the settings, locate (or download) the text and open it as a `Corpus`."""
    check_settings(config)
    spec = get_spec(config.dataset)
    val_ratio = spec.val_ratio if config.val_ratio is None else config.val_ratio
    test_ratio = spec.test_ratio if config.test_ratio is None else config.test_ratio
    clean_cfg = CleanConfig(
        config.normalization, config.whitespace or spec.whitespace, config.dedup
    )
    offline = config.offline or os.environ.get("LUMENLM_OFFLINE", "") not in ("", "0")
    root, origin = locate(spec, config.source, offline=offline, data_url=config.data_url)
    options = OpenOptions(
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        errors=config.errors,
        text_field=config.text_field,
        doc_sep=config.doc_sep,
    )
    corpus = open_corpus(spec, root, origin, options, seed=config.seed)
    if corpus.origin == "cache":  # same record as the run that downloaded it
        corpus.origin = "download"
    return corpus, clean_cfg


def check_splits_feasible(corpus: Corpus, config: PrepareConfig) -> None:
    """Fail fast (before training a tokenizer) when a split cannot get any document.

    Reads documents only until every split has one non-blank document, so it is
    cheap for any real corpus. Cleaning can still empty a document; `_build`
    re-checks the splits at the end.
    """
    seen: dict[str, int] = {}
    total = 0
    for _name, split, raw in corpus.documents():
        total += 1
        if raw.strip():
            seen[split] = seen.get(split, 0) + 1
            if len(seen) == len(SPLITS):
                return
    missing = [s for s in SPLITS if s not in seen]
    ratios = " and ".join(f"--{s}-ratio" for s in missing if s != "train")
    hint = (
        "add text"
        if missing == ["train"]
        else _or_list([f"raise {ratios}", *corpus.more_documents])
    )
    raise DataError(
        f"{corpus.name}: the {' and '.join(missing)} split(s) would be empty: only {total} "
        f"{corpus.unit} in {corpus.root.name} ({corpus.split_rule}); {hint}"
    )


def cleaned_documents(config: PrepareConfig) -> Iterator[tuple[str, str]]:
    """(split, cleaned text) for every document `prepare_dataset` would encode, in order.

    Useful to inspect what goes into the token files, and for round-trip checks.
    """
    corpus, clean_cfg = open_configured_corpus(config)
    heldout = heldout_digests(corpus, clean_cfg) if clean_cfg.dedup else None
    yield from DocumentFilter(corpus, clean_cfg, config.fraction, config.seed, heldout)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(f"--out {out} exists and is not empty; pass --force to replace it")
        if not (out / "meta.json").is_file():
            raise DataError(
                f"--out {out} is not empty and holds no meta.json (not a prepared dataset); "
                "--force only replaces an earlier output: choose another folder"
            )


def _build(
    config: PrepareConfig, corpus: Corpus, clean_cfg: CleanConfig, tmp: Path
) -> dict[str, Any]:
    from tqdm import tqdm

    from lumenlm.data.download import sha256_file
    from lumenlm.data.encode import encode_stream, split_pieces

    heldout = heldout_digests(corpus, clean_cfg) if clean_cfg.dedup else None

    def stream() -> DocumentFilter:
        return DocumentFilter(corpus, clean_cfg, config.fraction, config.seed, heldout)

    # 1. tokenizer: train on the train split (streamed), or reuse a given one
    if config.tokenizer is None:
        info(
            f"training a byte-level BPE tokenizer (vocab {config.vocab_size}) on {corpus.name} train"
        )
        counter = _Counter()
        # long documents go in as pieces cut at pre-token boundaries: same word counts,
        # same tokenizer, bounded memory
        tok = train_tokenizer(
            (
                piece
                for text in counter.count(text for split, text in stream() if split == "train")
                for piece in split_pieces(text)
            ),
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=config.special_tokens,
            show_progress=config.progress and sys.stderr.isatty(),
        )
        if counter.n == 0:
            raise DataError(
                f"{corpus.name}: no training documents left after cleaning; "
                "check --source, --fraction and the split ratios"
            )
        if tok.get_vocab_size() < config.vocab_size:
            warn(
                f"the tokenizer has {tok.get_vocab_size()} tokens, fewer than --vocab-size "
                f"{config.vocab_size}: the training text ran out of merges (ids still fit a "
                f"model with vocab {config.vocab_size})"
            )
    else:
        tok = load_tokenizer(config.tokenizer)
    tok_path = save_tokenizer(tok, tmp / "tokenizer.json")
    eot = eot_id(tok)
    vocab = tok.get_vocab_size()
    dtype = dtype_for_vocab(vocab) if config.dtype == "auto" else config.dtype
    check_dtype(dtype, vocab)

    # 2. encode every split in one streaming pass
    stats = {s: SplitStats() for s in SPLITS}
    writers = {s: TokenWriter(tmp / f"{s}.bin", dtype) for s in SPLITS}
    total_bytes = sum(f.path.stat().st_size for f in corpus.files)
    filt = stream()
    bar = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc=f"encode {corpus.name}",
        disable=None if config.progress else True,
    )

    def counted() -> Iterator[tuple[str, str]]:
        for split, text in filt:
            stats[split].bytes += len(text.encode("utf-8"))
            bar.update(min(filt.raw_chars, total_bytes) - bar.n)
            yield split, text

    try:
        for chunk in encode_stream(tok, counted(), eot):
            writers[chunk.key].write(chunk.ids)
            st = stats[chunk.key]
            st.documents += chunk.documents
            st.content_tokens += chunk.content_tokens
    finally:
        bar.close()
        for s, w in writers.items():
            stats[s].sha256 = w.close()
            stats[s].tokens = w.tokens
    for s in SPLITS:
        if stats[s].documents == 0:
            raise DataError(
                f"{corpus.name}: the {s} split is empty ({corpus.split_rule}); "
                + (
                    "add text or lower --fraction's effect"
                    if s == "train"
                    else f"raise --{s}-ratio or add documents (text: try --doc-sep blank)"
                )
            )

    # 3. meta.json
    files = []
    for f in corpus.files:
        digest = sha256_file(f.path)
        known = corpus.known_sha256.get(f.path.name)
        entry: dict[str, Any] = {
            "name": f.name,
            "role": f.role,
            "bytes": f.path.stat().st_size,
            "sha256": digest,
        }
        if known:
            entry["matches_official_sha256"] = digest == known
            if digest != known:
                warn(
                    f"{f.name} differs from the official file (sha256 {digest[:12]}... != {known[:12]}...)"
                )
        files.append(entry)
    all_bytes = sum(st.bytes for st in stats.values())
    all_content = sum(st.content_tokens for st in stats.values())
    import tokenizers

    meta: dict[str, Any] = {
        "version": 1,
        "dataset": corpus.name,
        "vocab_size": vocab,
        "dtype": dtype,
        "eot_id": eot,
        "pad_id": pad_id(tok),
        "special_tokens": special_token_ids(tok),
        "layout": "flat token stream per split; <|endoftext|> after every document",
        "splits": {
            s: {
                "file": f"{s}.bin",
                "tokens": st.tokens,
                "documents": st.documents,
                "content_tokens": st.content_tokens,
                "bytes": st.bytes,
                "sha256": st.sha256,
            }
            for s, st in stats.items()
        },
        "bytes_per_token": {
            **{s: _ratio(st.bytes, st.content_tokens) for s, st in stats.items()},
            "all": _ratio(all_bytes, all_content),
        },
        "bytes_per_token_convention": (
            "UTF-8 bytes of the cleaned text / tokens, not counting the <|endoftext|> "
            "separators (bits-per-byte = loss_nats_per_token / ln 2 / bytes_per_token)"
        ),
        "source": {
            "name": corpus.name,
            "origin": corpus.origin,
            **({"urls": corpus.urls} if corpus.urls else {}),
            "files": files,
            "split_rule": corpus.split_rule,
            "notes": corpus.notes,
            "fraction": config.fraction,
            "fraction_kept": _ratio(filt.train_chars_kept, filt.train_chars),
            "fraction_unit": "blank-line blocks of each document"
            if corpus.fraction_by_block
            else "documents",
            "val_ratio": corpus.val_ratio,
            "test_ratio": corpus.test_ratio,
            "seed": config.seed,
            **corpus.reader_settings,
        },
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": sha256_file(tok_path),
            "trained": config.tokenizer is None,
            "type": "byte-level BPE",
            "library": f"tokenizers {tokenizers.__version__}",
            "vocab_size": vocab,
            "vocab_size_requested": config.vocab_size if config.tokenizer is None else None,
            "min_frequency": config.min_frequency if config.tokenizer is None else None,
            "special_tokens": list(special_token_ids(tok)),
        },
        "cleaning": {
            **clean_cfg.to_dict(),
            "errors": config.errors,
            "dropped_documents": dict(filt.dropped),
        },
    }
    write_meta(tmp, meta)
    return meta


def _or_list(items: list[str]) -> str:
    """Items joined as in a sentence: a; a or b; a, b or c."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


class _Counter:
    """Counts the items of a stream as they pass (to detect an empty train split)."""

    def __init__(self) -> None:
        self.n = 0

    def count(self, items: Iterator[str]) -> Iterator[str]:
        for item in items:
            self.n += 1
            yield item
