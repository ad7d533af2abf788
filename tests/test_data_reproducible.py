"""`lumenlm prepare` on the local corpora, run twice: byte-identical outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lumenlm.cli import main


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize(
    "dataset,vocab",
    # TinyStories (10 s) under -m slow; WikiText-2 keeps the property in the default suite
    [pytest.param("tinystories", 8000, marks=pytest.mark.slow), ("wikitext-2", 4096)],
)
def test_prepare_twice_is_byte_identical(
    tmp_path, shared_data, monkeypatch, dataset, vocab
) -> None:
    monkeypatch.setenv("LUMENLM_DATA", str(shared_data))
    for run in ("a", "b"):
        args = [
            "prepare",
            dataset,
            "--vocab-size",
            str(vocab),
            "--out",
            str(tmp_path / run),
            "--no-progress",
        ]
        if dataset == "tinystories":
            args += ["--source", str(shared_data / "tinystories")]
        assert main(args) == 0
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert set(a) >= {"meta.json", "tokenizer.json", "train.bin", "val.bin", "test.bin"}
    assert a == b
