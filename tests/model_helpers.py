"""Shared helpers (no tests) for the tests of loading, eval, inspect and export: a small
tokenizer and a same-size one with other ids, model dirs (sealed with a manifest as
checkpoints are, or plain), tiny prepared datasets, bit flips, one-line CLI errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from lumenlm.model import GPT
from lumenlm.modelio import save_model, write_manifest
from lumenlm.presets import get_preset

TOKENIZER_VOCAB = 300
_WORDS = (
    "the a cat dog sat on mat ran to house little girl boy tree sun moon happy sad friend "
    "played ball park day night said hello library book read story once upon time there "
    "was big small red blue green"
).split()


def make_tokenizer(path: Path, vocab_size: int = TOKENIZER_VOCAB, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer.json with exactly `vocab_size` tokens at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    text = [" ".join(rng.choice(_WORDS) for _ in range(12)) + "." for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer)
    assert tok.get_vocab_size() == vocab_size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tok.to_str(pretty=False))
    return path


def other_tokenizer(src: Path, dst: Path) -> Path:
    """The same size as `src`, other content: two ordinary tokens swap their ids."""
    doc = json.loads(src.read_text())
    vocab = doc["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(doc))
    return dst


def model_dir(
    path: Path,
    tokenizer: Path | None = None,
    preset: str = "tiny",
    sealed: bool = False,
    vocab: int | None = None,
) -> Path:
    """A saved random model, its vocab_size `vocab`, else the tokenizer's size when one is
    given; `sealed` adds a manifest.json as training checkpoints have."""
    cfg = get_preset(preset).model
    if vocab is None and tokenizer is not None:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    if vocab is not None:
        cfg = dataclasses.replace(cfg, vocab_size=vocab)
    save_model(GPT(cfg), path, tokenizer_path=tokenizer)
    if sealed:
        write_manifest(path, {"step": 0})
    return path


def write_dataset(
    path: Path,
    tokens: np.ndarray,
    split: str = "val",
    eot: int = 0,
    n_bytes: int = 1000,
    vocab: int = 512,
    tokenizer: Path | None = None,
    record_tokenizer: bool = True,
) -> Path:
    """A minimal prepared-dataset folder following `lumenlm.data.tokens`' contract; with
    `tokenizer`, its tokenizer.json and (`record_tokenizer`) its sha256 in meta.json."""
    path.mkdir(parents=True, exist_ok=True)
    tokens.astype(np.uint16).tofile(path / f"{split}.bin")
    content = int((tokens != eot).sum())
    meta: dict = {
        "vocab_size": vocab,
        "dtype": "uint16",
        "eot_id": eot,
        "splits": {
            split: {
                "tokens": int(tokens.size),
                "documents": 3,
                "content_tokens": content,
                "bytes": n_bytes,
                "sha256": "x",
            }
        },
        "bytes_per_token": {split: n_bytes / content, "all": n_bytes / content},
    }
    if tokenizer is not None:
        (path / "tokenizer.json").write_bytes(tokenizer.read_bytes())
        if record_tokenizer:
            digest = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
            meta["tokenizer"] = {"file": "tokenizer.json", "sha256": digest}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def flip_bits(weights: Path, fraction: float = 0.01, seed: int = 0) -> int:
    """Flip one low mantissa bit in `fraction` of the float32s of a safetensors file (the
    values stay finite and plausible); returns how many floats were changed."""
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # u64 header length, then the header
    n_floats = (len(data) - start) // 4
    rng = random.Random(seed)
    picked = rng.sample(range(n_floats), max(1, int(n_floats * fraction)))
    for i in picked:
        data[start + 4 * i + rng.randrange(2)] ^= 1 << rng.randrange(8)  # little-endian low bytes
    weights.write_bytes(data)
    return len(picked)


def one_line_error(err: str, *needles: str) -> str:
    """The CLI's stderr is exactly one `lumenlm ...: error: ...` line containing `needles`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lumenlm ") and ": error: " in lines[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
