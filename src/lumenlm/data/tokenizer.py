"""Byte-level BPE tokenizers (Hugging Face `tokenizers`): train, save, load, encode, decode.

The tokenizer is GPT-2 style byte-level BPE with no normalizer and no
post-processor, so `decode(encode(text)) == text` for any string. Special tokens
(`<|endoftext|>`, `<|pad|>`, chat roles) get the first ids, in the order given.
Training is deterministic for the same documents in the same order (checked by
the tests across processes), so a prepared dataset is reproducible byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumenlm.data.tokens import ID_LIMITS
from lumenlm.errors import DataError, first_line
from lumenlm.presets import CHAT_SPECIALS

EOT = "<|endoftext|>"
PAD = "<|pad|>"
BYTE_ALPHABET = 256
# <|endoftext|>, <|pad|> and the chat roles, shared with the presets
DEFAULT_SPECIALS: list[str] = list(CHAT_SPECIALS)
# The largest vocabulary `lumenlm prepare` trains. uint32 token files could hold 2^32 ids,
# but memory runs out long before: the BPE trainer reserves ~45 bytes per requested id up
# front (a vocab of 10^11 asked it for 4.5 TB and aborted), and a model's embedding table
# is vocab x d_model weights (2^20 x 768 in fp32 is 3 GiB). Real vocabularies are
# 32k-262k ids, so 2^20 leaves room and still fails fast.
MAX_VOCAB_SIZE = 1 << 20


def check_vocab_size(vocab_size: int, special_tokens: Sequence[str]) -> None:
    """A byte-level vocab needs room for all 256 bytes plus every special token, and at
    most `MAX_VOCAB_SIZE` ids (checked before the trainer reserves memory for them)."""
    need = BYTE_ALPHABET + len(special_tokens)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise DataError(f"--vocab-size must be a whole number, got {vocab_size!r}; use e.g. 8000")
    if vocab_size < need:
        raise DataError(
            f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least {need} "
            f"(256 bytes + {len(special_tokens)} special tokens); raise it"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise DataError(
            f"--vocab-size {vocab_size} is too large: at most {MAX_VOCAB_SIZE} (2^20); token "
            f"files hold {ID_LIMITS['uint16']} ids as uint16 and {ID_LIMITS['uint32']} as "
            "uint32, but the BPE trainer reserves memory for every requested id up front and "
            "the model's embedding table grows with the vocabulary; lower --vocab-size "
            "(real vocabularies are 32000-262144)"
        )


def check_min_frequency(min_frequency: int) -> None:
    """A pair must be seen at least once to merge; the trainer takes a 64-bit count."""
    if not isinstance(min_frequency, int) or isinstance(min_frequency, bool):
        raise DataError(
            f"--min-frequency must be a whole number, got {min_frequency!r}; use e.g. 2"
        )
    if not 1 <= min_frequency < 1 << 63:
        raise DataError(
            f"--min-frequency must be from 1 to 2^63-1 (pairs seen fewer times are not "
            f"merged), got {min_frequency}; use e.g. 2"
        )


def check_special_tokens(special_tokens: Sequence[str]) -> None:
    """`<|endoftext|>` among them, each once, none empty."""
    if EOT not in special_tokens:
        raise DataError(
            f"special tokens must include {EOT} (it separates documents); add it to "
            "--special-tokens"
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise DataError(
            f"special tokens repeat: {', '.join(special_tokens)}; drop the repeats from "
            "--special-tokens"
        )
    if any(not t for t in special_tokens):
        raise DataError("special tokens must be non-empty strings; drop the empty ones")


def new_tokenizer() -> Tokenizer:
    """An empty byte-level BPE tokenizer (no normalizer, no post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    documents: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = tuple(DEFAULT_SPECIALS),
    length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train byte-level BPE on a stream of documents (it is read once, not stored)."""
    special_tokens = list(special_tokens)
    check_special_tokens(special_tokens)
    check_vocab_size(vocab_size, special_tokens)
    check_min_frequency(min_frequency)
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(documents, trainer=trainer, length=length)
    return tok


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a `tokenizer.json` (or a folder holding one, e.g. a prepared dataset or model dir)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise DataError(f"no tokenizer at {p}; pass a tokenizer.json file or a folder holding one")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises plain Exception on bad JSON
        first = first_line(exc)
        raise DataError(f"{p} is not a valid tokenizer.json ({first})") from None


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write `tokenizer.json` (compact, deterministic); returns the file path."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / "tokenizer.json"
    p.write_text(tok.to_str(pretty=False), encoding="utf-8")
    return p


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids for `text`; special-token strings inside the text are encoded as plain text."""
    return encode_batch(tok, [text])[0]


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids for many texts at once (multi-threaded in Rust)."""
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True  # "<|endoftext|>" typed in a document is text, not a boundary
    try:
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        tok.encode_special_tokens = previous


def decode(tok: Tokenizer, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Text for token ids; exact inverse of `encode` for byte-level BPE."""
    return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Special token string -> id, in id order."""
    added = tok.get_added_tokens_decoder()
    return {t.content: i for i, t in sorted(added.items()) if t.special}


def eot_id(tok: Tokenizer) -> int:
    """Id of `<|endoftext|>`, which separates documents in token files."""
    i = tok.token_to_id(EOT)
    if i is None:
        raise DataError(f"the tokenizer has no {EOT} token; retrain it with that special token")
    return i


def pad_id(tok: Tokenizer) -> int | None:
    """Id of `<|pad|>`, or None when the tokenizer has none."""
    return tok.token_to_id(PAD)
