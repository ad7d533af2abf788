"""Regression tests: memory-bounded encoding of long documents, split checks, --fraction on
single-document splits, --out safety, cache/download identity, WikiText carving, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from data_helpers import require_shared
from lumenlm.cli import main
from lumenlm.data import encode as encode_mod
from lumenlm.data import prepare as prepare_mod
from lumenlm.data.encode import can_split, encode_stream, split_pieces
from lumenlm.data.prepare import PrepareConfig, prepare_dataset
from lumenlm.data.tokenizer import encode, train_tokenizer
from lumenlm.data.tokens import read_meta
from lumenlm.errors import DataError


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0, argv
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _paragraphs(n: int, tag: str = "p") -> str:
    return "".join(
        f"Speaker {i}:\nThis is {tag} number {i}, with some words in it.\nAnd a second line.\n\n"
        for i in range(n)
    )


# ----------------------------------------------------------------------------- 1. pieces


def test_pieces_give_the_ids_of_the_whole_document_on_real_text() -> None:
    shared = require_shared("tinyshakespeare").parent
    texts = [(shared / "tinyshakespeare" / "input.txt").read_text()[:300_000]]
    for rel in ("wikitext-2-raw/wiki.valid.raw", "tinystories/TinyStories-train.head.txt"):
        if (shared / rel).is_file():
            texts.append((shared / rel).read_text()[:300_000])
    tok = train_tokenizer([t[:100_000] for t in texts], vocab_size=600)
    assert can_split(tok)
    for text in texts:
        pieces = split_pieces(text, 2000)
        assert "".join(pieces) == text
        if "\n = " not in text:  # WikiText lines start with a space: few places to cut
            assert len(pieces) > 50
        whole = encode(tok, text)
        assert [i for p in pieces for i in encode(tok, p)] == whole
    # a cut after whitespace + "\n" would NOT be a boundary ("\n\n" at a string end is one
    # pre-token): split_pieces never cuts there
    assert split_pieces("a\n\nb\n\nc", 1) == ["a\n\nb\n\nc"]
    assert split_pieces("a\nb \nc\nd", 1) == ["a\n", "b \nc\n", "d"]


class _Spy:
    """A tokenizer wrapper that records the longest text given to encode_batch_fast."""

    def __init__(self, tok: Tokenizer) -> None:
        object.__setattr__(self, "tok", tok)
        object.__setattr__(self, "longest", 0)

    def __getattr__(self, name: str):
        return getattr(self.tok, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.tok, name, value)

    def encode_batch_fast(self, texts, **kw):
        object.__setattr__(self, "longest", max(self.longest, *map(len, texts)))
        return self.tok.encode_batch_fast(texts, **kw)


def test_long_documents_are_encoded_in_pieces_with_one_eot() -> None:
    text = _paragraphs(400)
    tok = train_tokenizer([text], vocab_size=400)
    docs = [("train", text), ("train", "short one"), ("val", text)]
    spy = _Spy(tok)
    chunks = list(encode_stream(spy, docs, 0, piece_chars=1000))  # type: ignore[arg-type]
    assert spy.longest < 1200  # bounded by the piece size, not the document size
    got = {k: np.concatenate([c.ids for c in chunks if c.key == k]) for k in ("train", "val")}
    assert sum(c.documents for c in chunks) == 3
    assert got["train"].tolist() == [*encode(tok, text), 0, *encode(tok, "short one"), 0]
    assert got["val"].tolist() == [*encode(tok, text), 0]
    # a tokenizer whose pre-tokenizer is not byte-level: whole documents
    ws = Tokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1}, unk_token="[UNK]"))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not can_split(ws)
    spy = _Spy(ws)
    list(encode_stream(spy, docs, 1, piece_chars=1000))  # type: ignore[arg-type]
    assert spy.longest == len(text)


def test_trainer_gets_pieces_and_the_same_tokenizer(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "book.txt").write_text(_paragraphs(300))
    for i in range(30):
        (src / f"s{i}.txt").write_text(f"Small file {i}.\n")
    seen: list[int] = []
    real = prepare_mod.train_tokenizer

    def spy(docs, **kw):
        def counted():
            for d in docs:
                seen.append(len(d))
                yield d

        return real(counted(), **kw)

    monkeypatch.setattr(prepare_mod, "train_tokenizer", spy)

    def run(out: str) -> Path:
        cfg = PrepareConfig(
            dataset="text", out=tmp_path / out, source=str(src), doc_sep="file", seed=1,
            vocab_size=400, progress=False,
        )  # fmt: skip
        prepare_dataset(cfg)
        return tmp_path / out

    monkeypatch.setattr(encode_mod, "PIECE_CHARS", 10**9)
    whole = run("whole")
    assert max(seen) > 10_000
    seen.clear()
    monkeypatch.setattr(encode_mod, "PIECE_CHARS", 1000)
    pieces = run("pieces")
    assert max(seen) < 1200
    for name in ("tokenizer.json", "train.bin", "val.bin", "test.bin", "meta.json"):
        assert (whole / name).read_bytes() == (pieces / name).read_bytes(), name


# ----------------------------------------------------------------------------- 2. split checks


def test_single_txt_defaults_to_paragraphs_and_checks_splits_first(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    book = tmp_path / "book.txt"
    book.write_text(_paragraphs(200))
    base = ["prepare", "text", "--source", str(book), "--vocab-size", "300", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "o")]) == 0
    meta = read_meta(tmp_path / "o")
    assert meta["source"]["doc_sep"] == "blank"
    assert meta["splits"]["val"]["documents"] > 0 and meta["splits"]["test"]["documents"] > 0

    def no_training(*a, **k):
        raise AssertionError("the tokenizer must not be trained")

    monkeypatch.setattr(prepare_mod, "train_tokenizer", no_training)
    msg = _one_line_error(capsys, [*base, "--out", str(tmp_path / "f"), "--doc-sep", "file"])
    assert "would be empty" in msg and "--doc-sep blank" in msg
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one paragraph\n\nanother one\n")
    msg = _one_line_error(capsys, [*base[:3], str(tiny), *base[4:], "--out", str(tmp_path / "t")])
    assert "would be empty" in msg and "paragraphs" in msg
    assert not (tmp_path / "f").exists() and not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------- 3. fraction


def test_fraction_on_single_document_split_keeps_blocks(tmp_path: Path) -> None:
    src = tmp_path / "ts"
    src.mkdir()
    (src / "input.txt").write_text(_paragraphs(600))

    def run(out: str, fraction: float) -> dict:
        cfg = PrepareConfig(
            dataset="tinyshakespeare", out=tmp_path / out, source=str(src), vocab_size=300,
            fraction=fraction, progress=False,
        )  # fmt: skip
        return prepare_dataset(cfg)

    full, part = run("full", 1.0), run("part", 0.3)
    assert full["source"]["fraction_kept"] == 1.0
    kept = part["source"]["fraction_kept"]
    assert 0.2 < kept < 0.4
    ratio = part["splits"]["train"]["bytes"] / full["splits"]["train"]["bytes"]
    assert 0.2 < ratio < 0.4
    assert part["splits"]["train"]["documents"] == 1  # still one document: no EOT invented
    assert part["splits"]["val"] == full["splits"]["val"]


# ----------------------------------------------------------------------------- 4. --out safety


def test_out_never_deletes_inputs_or_foreign_folders(tmp_path: Path, capsys) -> None:
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "book.txt").write_text(_paragraphs(100))
    base = ["prepare", "text", "--vocab-size", "300", "--no-progress", "--force"]
    for out in (src, tmp_path):
        msg = _one_line_error(capsys, [*base, "--source", str(src), "--out", str(out)])
        assert "choose an output folder outside it" in msg
        msg = _one_line_error(capsys, [*base, "--source", str(src / "book.txt"), "--out", str(out)])
        assert "outside it" in msg
    assert (src / "book.txt").read_text() == _paragraphs(100)
    good = tmp_path / "good"
    book = str(src / "book.txt")
    assert main([*base, "--source", book, "--out", str(good)]) == 0
    tok_out = tmp_path / "tok-out"
    tok_out.mkdir()
    (tok_out / "tokenizer.json").write_text((good / "tokenizer.json").read_text())
    argv = [*base, "--source", book, "--tokenizer", str(tok_out / "tokenizer.json")]
    assert "outside it" in _one_line_error(capsys, [*argv, "--out", str(tok_out)])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("keep me")
    assert "no meta.json" in _one_line_error(capsys, [*argv, "--out", str(foreign)])
    assert (foreign / "notes.md").read_text() == "keep me"
    assert main([*argv, "--out", str(good)]) == 0  # an earlier output is replaced


# ----------------------------------------------------------------------------- 6. WikiText


def test_wikitext_with_only_the_test_file(tmp_path: Path) -> None:
    src = tmp_path / "wt"
    src.mkdir()
    arts = "".join(f" \n = Article {i} = \n \n Text of article {i} . \n" for i in range(120))
    (src / "wiki.test.raw").write_text(arts)
    cfg = PrepareConfig(dataset="wikitext-2", out=tmp_path / "o", source=str(src), vocab_size=300)
    cfg.progress = False
    meta = prepare_dataset(cfg)
    docs = {s: meta["splits"][s]["documents"] for s in ("train", "val", "test")}
    assert all(docs.values()) and sum(docs.values()) == 120
    assert docs["train"] > docs["val"] and docs["train"] > docs["test"]
    assert "train, val and test were carved from wiki.test.raw" in meta["source"]["notes"][0]


# ----------------------------------------------------------------------------- 7. SIGTERM


def test_sigterm_cleans_up_and_stale_tmp_is_removed(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "book.txt").write_text(_paragraphs(100))
    stale = tmp_path / ".o.tmp-999999999"  # no such process
    live = tmp_path / f".o.tmp-{os.getppid()}"  # a live process (not us)
    stale.mkdir()
    live.mkdir()
    real = prepare_mod.train_tokenizer

    def killed(docs, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(docs, **kw)

    monkeypatch.setattr(prepare_mod, "train_tokenizer", killed)
    book = str(src / "book.txt")
    cfg = PrepareConfig(dataset="text", out=tmp_path / "o", source=book, vocab_size=300)
    cfg.progress = False
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        prepare_dataset(cfg)
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", live.name])


def test_split_check_message_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("only one document\n")
    cfg = PrepareConfig(dataset="text", out=tmp_path / "o", source=str(tmp_path), doc_sep="file")
    with pytest.raises(DataError) as exc:
        prepare_dataset(cfg)
    assert "\n" not in str(exc.value) and "--val-ratio" in str(exc.value)
    assert json.dumps(str(exc.value))
