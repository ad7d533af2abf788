"""Batched, parallel encoding of document streams into flat token arrays.

Documents are encoded a chunk at a time with `Tokenizer.encode_batch_fast`,
which runs on all cores in Rust and releases the GIL; a worker thread encodes one
chunk while the caller reads and cleans the next, and at most `max_inflight`
chunks are alive at once, so memory stays bounded whatever the corpus size.

A long document is encoded in pieces of about `PIECE_CHARS` characters (the
tokenizer's per-token bookkeeping costs ~100x the text, so one 35 MB document
would otherwise need gigabytes). A piece ends right after a "\n" that sits
between two non-whitespace characters: with the GPT-2 byte-level pre-tokenizer
that is always a pre-token boundary, so the ids of the pieces, concatenated, are
exactly the ids of the whole document (checked by the tests on real text). The
end-of-text id follows the last piece only. Tokenizers for which that does not
hold (another pre-tokenizer, a normalizer) encode whole documents.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

from lumenlm.errors import DataError

CHUNK_DOCS = 2048
CHUNK_CHARS = 4 << 20
PIECE_CHARS = 1 << 20
# Encoding threads at most: more than any machine's cores, and a bound on what a typo
# (--workers 100000) asks the thread pool to spawn.
MAX_WORKERS = 1024
# a "\n" between two non-whitespace characters (Python's \s covers every character
# the tokenizer's regex treats as whitespace, so this is conservative)
_CUT = re.compile(r"(?<=\S)\n(?=\S)")


@dataclass
class EncodedChunk:
    """Token ids of a run of documents, each followed by the end-of-text id."""

    key: str  # caller's label (the split name)
    ids: np.ndarray  # uint32, includes one separator per document
    documents: int
    content_tokens: int  # ids.size - documents


def check_workers(workers: int | None) -> None:
    """None (all cores) or 1..MAX_WORKERS threads; more would only exhaust the machine."""
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise DataError(
            f"--workers must be a whole number from 1 to {MAX_WORKERS}, got {workers!r}; "
            "leave it out to use all cores"
        )


def set_threads(workers: int | None) -> None:
    """Use `workers` threads for Rust-side encoding (must run before the first parallel call);
    None leaves the default (all cores). A bad count is a `DataError` (`check_workers`)."""
    check_workers(workers)
    if workers is None:
        return
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    os.environ["RAYON_RS_NUM_THREADS"] = str(workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if workers == 1 else "true"


def split_pieces(text: str, piece_chars: int | None = None) -> list[str]:
    """Cut `text` into pieces of at least ~`piece_chars` characters at safe boundaries.

    Each cut is right after a "\n" that has a non-whitespace character on both sides
    (a pre-token boundary for the byte-level pre-tokenizer). A text without such a
    place stays one piece. `"".join(pieces) == text`.
    """
    size = PIECE_CHARS if piece_chars is None else piece_chars
    if len(text) <= size:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def can_split(tok: Tokenizer) -> bool:
    """True when `split_pieces` cuts give the same ids as whole documents for `tok`.

    That holds for a byte-level pre-tokenizer with the GPT-2 regex, no normalizer and
    no non-special added token that could span a cut (special tokens are encoded as
    plain text here).
    """
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return False
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return False
    return not any(
        "\n" in t.get("content", "") and not t.get("special", False)
        for t in spec.get("added_tokens") or []
    )


def encode_chunk(
    tok: Tokenizer, docs: list[str], eot: int, key: str = "", ends: list[bool] | None = None
) -> EncodedChunk:
    """Encode documents and lay them out as doc0 EOT doc1 EOT ... (one flat uint32 array).

    With `ends`, `docs` are pieces and only those marked True get the EOT after them.
    """
    encodings = tok.encode_batch_fast(docs, add_special_tokens=False)
    rows = [e.ids for e in encodings]  # each .ids access builds a new list: take it once
    del encodings
    n_docs = 0
    for i, row in enumerate(rows):
        if ends is None or ends[i]:
            row.append(eot)
            n_docs += 1
    total = sum(map(len, rows))
    out = np.fromiter(chain.from_iterable(rows), dtype=np.uint32, count=total)
    return EncodedChunk(key, out, n_docs, total - n_docs)


def _pieces(
    docs: Iterable[tuple[str, str]], piece_chars: int | None
) -> Iterator[tuple[str, str, bool]]:
    """(key, piece, is_last_piece_of_its_document) for every document."""
    for key, text in docs:
        parts = [text] if piece_chars == 0 else split_pieces(text, piece_chars)
        for i, part in enumerate(parts):
            yield key, part, i == len(parts) - 1
        del parts


def _chunked_pieces(
    items: Iterable[tuple[str, str, bool]], chunk_docs: int, chunk_chars: int
) -> Iterator[tuple[str, list[str], list[bool]]]:
    buffers: dict[str, tuple[list[str], list[bool]]] = {}
    sizes: dict[str, int] = {}
    for key, text, end in items:
        texts, ends = buffers.setdefault(key, ([], []))
        texts.append(text)
        ends.append(end)
        sizes[key] = sizes.get(key, 0) + len(text)
        if len(texts) >= chunk_docs or sizes[key] >= chunk_chars:
            yield key, texts, ends
            buffers[key] = ([], [])
            sizes[key] = 0
    for key, (texts, ends) in buffers.items():
        if texts:
            yield key, texts, ends


def encode_stream(
    tok: Tokenizer,
    docs: Iterable[tuple[str, str]],
    eot: int,
    *,
    chunk_docs: int = CHUNK_DOCS,
    chunk_chars: int = CHUNK_CHARS,
    max_inflight: int = 2,
    piece_chars: int | None = None,
) -> Iterator[EncodedChunk]:
    """Encode (key, text) pairs; yields chunks in input order (per key).

    Long documents are encoded in pieces (`split_pieces`, `piece_chars` characters;
    0 = never) when the tokenizer allows it (`can_split`); the ids are the same.
    """
    if not can_split(tok):
        piece_chars = 0
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True  # "<|endoftext|>" typed inside a document stays text
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumenlm-encode") as pool:
            pending: deque[Future[EncodedChunk]] = deque()
            items = _pieces(docs, piece_chars)
            for key, batch, ends in _chunked_pieces(items, chunk_docs, chunk_chars):
                pending.append(pool.submit(encode_chunk, tok, batch, eot, key, ends))
                while len(pending) >= max_inflight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        tok.encode_special_tokens = previous
