"""WikiText-2 word perplexity exactly as lm-evaluation-harness's ``wikitext`` task reports it.

Numbers that compare across tokenizers: token perplexity depends on the vocabulary,
word perplexity and bits per byte do not, so they are what published WikiText-2 results
quote. lm-eval (``lm_eval/tasks/wikitext``, version 2.0) computes them as follows, and
so does this module:

- Documents: the ``EleutherAI/wikitext_document_level`` split of the raw file (its
  dataset script): the file is split on ``"\\n"``; a line that, after ``"= = ="`` ->
  ``"==="`` and ``"= ="`` -> ``"=="``, strips to ``"= ... ="`` is an article title and
  starts a new page; a page is its lines joined with ``"\\n"``; whitespace-only pages
  are dropped, except the last one, which is always kept.
- Scored text: ``wikitext_detokenizer(page)`` (undoing WikiText's tokenization:
  ``" @-@ "`` -> ``"-"``, spaces before punctuation, ...), scored as one rolling
  log-likelihood (`lumenlm.evaluate.rolling`).
- Counts: words = ``len(re.split(r"\\s+", page))`` and bytes = UTF-8 bytes, both of the
  ORIGINAL page, before detokenization (lm-eval's ``process_results``).
- word_perplexity = exp(-sum(loglik) / sum(words)); byte_perplexity = exp(-sum(loglik)
  / sum(bytes)); bits_per_byte = -sum(loglik) / sum(bytes) / ln 2 (weighted over all
  documents, not averaged per document).

The split is the test file (``wiki.test.raw``, lm-eval's ``test_split``) unless asked
otherwise. Files are found under ``--tasks-dir`` or ``$LUMENLM_DATA`` (directly or in
``wikitext-2-raw/``), else through the dataset registry (``lumenlm prepare
wikitext-2``'s lookup: its cache, then the official zip, sha256-checked).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lumenlm.data.datasets import get_spec
from lumenlm.data.download import sha256_file
from lumenlm.data.locate import locate
from lumenlm.errors import ConfigError, DataError
from lumenlm.evaluate.rolling import rolling_loglikelihoods
from lumenlm.model import GPT

SPLIT_FILES = {"test": "wiki.test.raw", "validation": "wiki.valid.raw", "train": "wiki.train.raw"}
SUBDIRS = ("wikitext-2-raw", "wikitext-2", "wikitext-2-raw-v1")
PREFIX_TOKEN = "<|endoftext|>"
CONVENTION = (
    "lm-eval wikitext v2.0: EleutherAI/wikitext_document_level pages; each page's "
    "wikitext_detokenizer text scored as one rolling log-likelihood (windows of the "
    "context length, <|endoftext|> prefix, each token predicted once); words "
    "(re.split(r'\\s+')) and UTF-8 bytes counted on the original page"
)


# ----------------------------------------------------------------------------- documents


def wikitext_pages(text: str) -> list[str]:
    """The document-level pages of a raw WikiText file, as EleutherAI's dataset splits it."""
    pages: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        rline = line.replace("= = =", "===").replace("= =", "==").strip()
        if rline.startswith("= ") and rline.strip().endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))  # the last page is kept even when blank
    return pages


def wikitext_detokenizer(page: str) -> str:
    """lm-eval's ``preprocess_wikitext.wikitext_detokenizer``, rule for rule, in order."""
    s = page
    # contractions
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    # number separators
    s = s.replace(" @-@ ", "-")
    s = s.replace(" @,@ ", ",")
    s = s.replace(" @.@ ", ".")
    # punctuation
    for mark in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {mark} ", f"{mark} ")
    # double brackets
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    # miscellaneous
    s = s.replace("= = = =", "====")
    s = s.replace("= = =", "===")
    s = s.replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n")
    s = s.replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def count_words(page: str) -> int:
    """lm-eval's word count: pieces of ``re.split(r"\\s+", page)`` (empty ends included)."""
    return len(re.split(r"\s+", page))


# ----------------------------------------------------------------------------- files


def find_wikitext_file(
    split: str = "test", tasks_dir: str | Path | None = None, download: bool = True
) -> Path:
    """The raw WikiText-2 file of `split`: under `tasks_dir` / ``$LUMENLM_DATA`` first
    (directly or in a ``wikitext-2-raw/`` folder), else via the dataset registry."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown WikiText split {split!r}; use one of: {', '.join(SPLIT_FILES)}")
    name = SPLIT_FILES[split]
    if tasks_dir is not None:
        root = Path(tasks_dir)
        for cand in (root / name, *(root / sub / name for sub in SUBDIRS)):
            if cand.is_file():
                return cand
    root, _ = locate(get_spec("wikitext-2"), None, offline=not download, data_url=None)
    for cand in (root / name, *(root / sub / name for sub in SUBDIRS)):
        if cand.is_file():
            return cand
    raise DataError(
        f"no {name} in {root}; put the WikiText-2 raw files (wiki.test.raw, wiki.valid.raw) "
        "in --tasks-dir DIR or $LUMENLM_DATA/wikitext-2-raw/"
    )


def official_sha256(path: Path) -> bool | None:
    """Whether `path` is byte-identical to the official file (None: no digest known)."""
    from lumenlm.data.datasets.wikitext2 import SHA256

    known = SHA256.get(path.name)
    return None if known is None else sha256_file(path) == known


# ----------------------------------------------------------------------------- scoring


@dataclass
class PerplexityResult:
    """A document-level perplexity task: lm-eval's three metrics plus token perplexity."""

    task: str
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    token_perplexity: float
    loglikelihood: float  # summed over all documents, natural log
    documents: int
    words: int
    bytes: int
    tokens: int
    window: int
    split: str
    source: str = ""
    official_file: bool | None = None
    convention: str = CONVENTION
    per_document: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_document")
        return d


def perplexity_result(
    task: str,
    pages: list[str],
    loglikelihoods: list[float],
    token_counts: list[int],
    window: int,
    split: str,
) -> PerplexityResult:
    """Aggregate per-document log-likelihoods the way lm-eval's wikitext task does."""
    if not pages:
        raise DataError(f"{task}: no documents to score")
    words = [count_words(p) for p in pages]
    nbytes = [len(p.encode("utf-8")) for p in pages]
    total = sum(loglikelihoods)
    n_tokens = sum(token_counts)
    return PerplexityResult(
        task=task,
        word_perplexity=math.exp(-total / sum(words)),
        byte_perplexity=math.exp(-total / sum(nbytes)),
        bits_per_byte=-total / sum(nbytes) / math.log(2),
        token_perplexity=math.exp(-total / n_tokens) if n_tokens else float("nan"),
        loglikelihood=total,
        documents=len(pages),
        words=sum(words),
        bytes=sum(nbytes),
        tokens=n_tokens,
        window=window,
        split=split,
        per_document=[
            {"doc": i, "loglikelihood": ll, "words": w, "bytes": b, "tokens": t}
            for i, (ll, w, b, t) in enumerate(zip(loglikelihoods, words, nbytes, token_counts))
        ],
    )


def evaluate_wikitext(
    model: GPT,
    tokenizer: Any = None,  # tokenizers.Tokenizer; default: model.tokenizer
    tasks_dir: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    download: bool = True,
    progress: bool | None = None,
) -> PerplexityResult:
    """Word perplexity, byte perplexity and bits per byte on WikiText-2 (first `limit` pages)."""
    from lumenlm.evaluate.multiple_choice import tokenizer_encoder

    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}; use a positive value")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer.json; wikitext needs one to encode text")
    prefix = tokenizer.token_to_id(PREFIX_TOKEN)
    if prefix is None:
        raise ConfigError(
            f"the tokenizer has no {PREFIX_TOKEN} token, which starts every rolling window"
        )
    path = find_wikitext_file(split, tasks_dir, download)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    pages = wikitext_pages(text)[:limit]
    encode = tokenizer_encoder(tokenizer)
    docs = [encode(wikitext_detokenizer(p)) for p in pages]
    window = model.config.context_length
    lls = rolling_loglikelihoods(model, docs, prefix, batch_size, window, progress, "wikitext")
    result = perplexity_result("wikitext", pages, lls, [len(d) for d in docs], window, split)
    result.source = str(path)
    result.official_file = official_sha256(path)
    return result
