"""Cleaning, readers (document layouts), split assignment and subsampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumenlm.data import readers
from lumenlm.data.clean import CleanConfig, Deduplicator, clean_text
from lumenlm.data.split import assign_split, contiguous_bounds, in_fraction
from lumenlm.errors import DataError


def test_clean_normalizes_controls_and_whitespace() -> None:
    cfg = CleanConfig()
    raw = "\ufeffCafe\u0301 \x00bar\x07  \r\nline two\t \r\n\n\n\n\nend  \n"
    assert clean_text(raw, cfg) == "Caf\u00e9 bar\nline two\n\nend"
    keep = CleanConfig(whitespace="keep")
    assert clean_text(" \n = Title = \n \n", keep) == " \n = Title = \n \n"
    assert clean_text(" \n \n", keep) == ""
    assert clean_text("x\u2028y\tz", cfg) == "x\u2028y\tz"  # tabs and Unicode separators stay
    assert clean_text("\uff21", CleanConfig(normalization="NFKC")) == "A"
    with pytest.raises(DataError):
        CleanConfig(normalization="NFX")


def test_dedup_is_exact() -> None:
    d = Deduplicator()
    assert d.is_new("a b") and d.is_new("a  b") and not d.is_new("a b")
    assert d.dropped == 1 and len(d) == 2


def test_split_is_deterministic_and_close_to_ratios() -> None:
    docs = [f"document number {i}" for i in range(20_000)]
    splits = [assign_split(d, 0.1, 0.05) for d in docs]
    assert splits == [assign_split(d, 0.1, 0.05) for d in docs]
    assert abs(splits.count("val") / len(docs) - 0.1) < 0.01
    assert abs(splits.count("test") / len(docs) - 0.05) < 0.01
    assert splits != [assign_split(d, 0.1, 0.05, seed=1) for d in docs]
    kept = sum(in_fraction(d, 0.02) for d in docs)
    assert 300 < kept < 500
    # the fraction depends on the text only, not on order
    assert [in_fraction(d, 0.02) for d in reversed(docs)] == [in_fraction(d, 0.02) for d in docs][
        ::-1
    ]
    assert contiguous_bounds(40_000, 0.05, 0.05) == (36_000, 38_000)


def test_readers_layouts(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("\nOne.\nTwo.\n<|endoftext|>\nThree.\n<|endoftext|>\nTail")
    assert list(readers.eot_documents(f)) == ["\nOne.\nTwo.\n", "Three.\n", "Tail"]
    f.write_text("p1 l1\np1 l2\n\n \n\np2\n")
    assert list(readers.blank_line_documents(f)) == ["p1 l1\np1 l2\n", "p2\n"]
    wiki = " \n = A = \n \n text a \n \n = = Sec = = \n more \n \n = B = \n b \n"
    f.write_text(wiki)
    docs = list(readers.wikitext_documents(f))
    assert docs == [" \n = A = \n \n text a \n \n = = Sec = = \n more \n \n", " = B = \n b \n"]
    assert "".join(docs) == wiki


def test_iter_lines_blocks_and_bad_utf8(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 7)
    f = tmp_path / "b.txt"
    text = "h\u00e9llo world\nsecond line that is long\n\nx\u2028y\n"
    f.write_text(text, encoding="utf-8")
    assert "".join(readers.iter_lines(f)) == text
    assert list(readers.iter_lines(f))[3] == "x\u2028y\n"
    f.write_bytes(b"good line\nbad \xff byte\n")
    with pytest.raises(DataError, match="byte offset 14"):
        list(readers.iter_lines(f))
    assert "".join(readers.iter_lines(f, errors="replace")) == "good line\nbad \ufffd byte\n"


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: no field 'text'"):
        list(readers.jsonl_documents(f))
    assert next(iter(readers.jsonl_documents(f, "text"))) == "a"
    f.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSON"):
        list(readers.jsonl_documents(f))
