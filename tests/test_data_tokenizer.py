"""Byte-level BPE: exact round trips, special ids, vocab checks, deterministic training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import STORIES
from lumenlm.data.tokenizer import (
    DEFAULT_SPECIALS,
    decode,
    encode,
    eot_id,
    load_tokenizer,
    pad_id,
    save_tokenizer,
    special_token_ids,
    train_tokenizer,
)
from lumenlm.errors import DataError

TRICKY = [
    "  leading and trailing  ",
    "tabs\tand\nnewlines\n\n",
    "emoji \U0001f600 and CJK \u4e2d\u6587 and RTL \u05e9\u05dc\u05d5\u05dd",
    "literal <|endoftext|> and <|user|> inside text",
    "don't won't it's  ,  .  !",
    "\u00e9\u0301 combining",
]


@pytest.fixture(scope="module")
def tok():
    docs = [f"{s} {i}" for i, s in enumerate(STORIES * 30)]
    return train_tokenizer(docs, vocab_size=400, min_frequency=2, special_tokens=DEFAULT_SPECIALS)


def test_round_trip_is_exact(tok) -> None:
    for text in [*TRICKY, *STORIES]:
        assert decode(tok, encode(tok, text)) == text
    ids = encode(tok, "literal <|endoftext|> here")
    assert eot_id(tok) not in ids  # typed special tokens stay text


def test_special_ids_come_first(tok) -> None:
    assert special_token_ids(tok) == {t: i for i, t in enumerate(DEFAULT_SPECIALS)}
    assert eot_id(tok) == 0 and pad_id(tok) == 1
    assert tok.get_vocab_size() <= 400
    assert tok.encode("hello").ids == encode(tok, "hello")  # no post-processor adds tokens


def test_save_and_load(tok, tmp_path: Path) -> None:
    path = save_tokenizer(tok, tmp_path)
    assert path.name == "tokenizer.json"
    again = load_tokenizer(tmp_path)
    assert again.to_str() == tok.to_str()
    assert load_tokenizer(path).get_vocab_size() == tok.get_vocab_size()
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_vocab_size_must_hold_bytes_and_specials() -> None:
    with pytest.raises(DataError, match="at least 261"):
        train_tokenizer(["abc"], vocab_size=260, special_tokens=DEFAULT_SPECIALS)
    with pytest.raises(DataError, match="must include"):
        train_tokenizer(["abc"], vocab_size=300, special_tokens=["<|pad|>"])


_TRAIN_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {tests!r})
from data_helpers import STORIES
from lumenlm.data.tokenizer import train_tokenizer
docs = [f"{{s}} {{i}}" for i, s in enumerate(STORIES * 40)] + ["zzz yyy xxx www"] * 3
tok = train_tokenizer(docs, vocab_size=700, min_frequency=1)
print(hashlib.sha256(tok.to_str().encode()).hexdigest())
"""


def test_training_is_deterministic_across_processes() -> None:
    code = _TRAIN_SCRIPT.format(tests=str(Path(__file__).parent))
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(digests) == 1
