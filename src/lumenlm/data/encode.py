"""Batched, parallel encoding of document streams into flat token arrays.

Documents are encoded a chunk at a time with `Tokenizer.encode_batch_fast`,
which runs on all cores in Rust and releases the GIL; a worker thread encodes one
chunk while the caller reads and cleans the next, and at most `max_inflight`
chunks are alive at once, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

CHUNK_DOCS = 2048
CHUNK_CHARS = 4 << 20


@dataclass
class EncodedChunk:
    """Token ids of a run of documents, each followed by the end-of-text id."""

    key: str  # caller's label (the split name)
    ids: np.ndarray  # uint32, includes one separator per document
    documents: int
    content_tokens: int  # ids.size - documents


def set_threads(workers: int | None) -> None:
    """Use `workers` threads for Rust-side encoding (must run before the first parallel call)."""
    if workers is None or workers <= 0:
        return
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    os.environ["RAYON_RS_NUM_THREADS"] = str(workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if workers == 1 else "true"


def encode_chunk(tok: Tokenizer, docs: list[str], eot: int, key: str = "") -> EncodedChunk:
    """Encode documents and lay them out as doc0 EOT doc1 EOT ... (one flat uint32 array)."""
    encodings = tok.encode_batch_fast(docs, add_special_tokens=False)
    rows = [e.ids for e in encodings]  # each .ids access builds a new list: take it once
    for row in rows:
        row.append(eot)
    total = sum(map(len, rows))
    out = np.fromiter(chain.from_iterable(rows), dtype=np.uint32, count=total)
    return EncodedChunk(key, out, len(docs), total - len(docs))


def chunked(
    docs: Iterable[tuple[str, str]], chunk_docs: int = CHUNK_DOCS, chunk_chars: int = CHUNK_CHARS
) -> Iterator[tuple[str, list[str]]]:
    """Group (key, text) pairs into per-key chunks of at most `chunk_docs` docs / `chunk_chars` chars."""
    buffers: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for key, text in docs:
        buf = buffers.setdefault(key, [])
        buf.append(text)
        sizes[key] = sizes.get(key, 0) + len(text)
        if len(buf) >= chunk_docs or sizes[key] >= chunk_chars:
            yield key, buf
            buffers[key] = []
            sizes[key] = 0
    for key, buf in buffers.items():
        if buf:
            yield key, buf


def encode_stream(
    tok: Tokenizer,
    docs: Iterable[tuple[str, str]],
    eot: int,
    *,
    chunk_docs: int = CHUNK_DOCS,
    chunk_chars: int = CHUNK_CHARS,
    max_inflight: int = 2,
) -> Iterator[EncodedChunk]:
    """Encode (key, text) pairs; yields chunks in input order (per key)."""
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True  # "<|endoftext|>" typed inside a document stays text
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumenlm-encode") as pool:
            pending: deque[Future[EncodedChunk]] = deque()
            for key, batch in chunked(docs, chunk_docs, chunk_chars):
                pending.append(pool.submit(encode_chunk, tok, batch, eot, key))
                while len(pending) >= max_inflight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        tok.encode_special_tokens = previous
