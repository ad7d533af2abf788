"""The document stream that `prepare` encodes: cleaned, subsampled and de-duplicated.

`prepare` reads the corpus more than once (tokenizer training, then encoding), and
every pass must see exactly the same documents, so the per-document decisions live in
one class: `DocumentFilter` cleans each raw document, drops the empty ones, keeps the
`--fraction` share of train (by document hash, or by blank-line block for corpora that
are one document per split), and with `--dedup` drops repeats and train copies of
val/test documents. It counts what it drops, for meta.json.
"""

from __future__ import annotations

from collections.abc import Iterator

from lumenlm.data.clean import CleanConfig, Deduplicator, clean_text, doc_digest
from lumenlm.data.corpus import Corpus
from lumenlm.data.split import SPLITS, in_fraction


class DocumentFilter:
    """Cleans, routes, subsamples and de-duplicates the corpus stream, counting what it drops."""

    def __init__(
        self,
        corpus: Corpus,
        clean_cfg: CleanConfig,
        fraction: float,
        seed: int,
        heldout: set[bytes] | None,
    ) -> None:
        self.corpus = corpus
        self.clean_cfg = clean_cfg
        self.fraction = fraction
        self.seed = seed
        self.heldout = heldout  # digests of val/test docs: identical train docs are dropped
        self.dropped = {"empty": 0, "fraction": 0, "duplicate": 0}
        self.raw_chars = 0  # characters read so far, kept or not (for the progress bar)
        # cleaned train characters before / after --fraction (the share actually kept)
        self.train_chars = 0
        self.train_chars_kept = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        dedup = {s: Deduplicator() for s in SPLITS} if self.clean_cfg.dedup else None
        for _name, split, raw in self.corpus.documents():
            self.raw_chars += len(raw)
            text = clean_text(raw, self.clean_cfg)
            if not text:
                self.dropped["empty"] += 1
                continue
            if split == "train":
                self.train_chars += len(text)
                if self.fraction < 1.0 and self.corpus.fraction_by_block:
                    # one document per split: keep a share of its blank-line blocks instead
                    text = subsample_blocks(text, self.fraction, self.seed)
                    keep = bool(text)
                else:
                    keep = in_fraction(text, self.fraction, self.seed)
                if not keep:
                    self.dropped["fraction"] += 1
                    continue
                self.train_chars_kept += len(text)
            if dedup is not None:
                leaked = (
                    split == "train"
                    and self.heldout is not None
                    and doc_digest(text) in self.heldout
                )
                if leaked or not dedup[split].is_new(text):
                    self.dropped["duplicate"] += 1
                    continue
            yield split, text


def subsample_blocks(text: str, fraction: float, seed: int) -> str:
    """The blank-line blocks (paragraphs, speeches) of `text` chosen by `in_fraction`, joined."""
    return "\n\n".join(b for b in text.split("\n\n") if in_fraction(b, fraction, seed))


def heldout_digests(corpus: Corpus, clean_cfg: CleanConfig) -> set[bytes]:
    """Digests of the cleaned val/test documents (`--dedup` drops their copies in train)."""
    digests: set[bytes] = set()
    for _name, split, raw in corpus.documents():
        if split != "train":
            text = clean_text(raw, clean_cfg)
            if text:
                digests.add(doc_digest(text))
    return digests
