"""`lumenlm inspect`: every analysis is written with an index.html that links only local
files (no network request), --analyses picks a subset, bad input is one line and
nothing is written, a long text is cropped with a notice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lumenlm.cli import main
from lumenlm.modelio import load
from model_helpers import make_tokenizer, model_dir, one_line_error

ALL_FILES = {
    "attention.png",
    "logit_lens.png",
    "logit_lens.json",
    "token_loss.html",
    "dla_heads.png",
    "dla_layers.png",
    "head_ablation.png",
    "induction.png",
    "inspect.json",
    "index.html",
}


@pytest.fixture(scope="module")
def mdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    return model_dir(root / "m", tokenizer=make_tokenizer(root / "t.json"), preset="tiny")


def _local_refs_only(page: Path) -> list[str]:
    text = page.read_text()
    assert not re.search(r"(https?:)?//", text.replace("<!doctype html>", "")), page
    refs = re.findall(r"(?:href|src)='([^']+)'", text)
    for ref in refs:
        assert ref.startswith("#") or (page.parent / ref).is_file(), ref
    return refs


def test_cli_writes_every_analysis_and_an_index(mdir, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["inspect", str(mdir), "--text", "the dog ran to the park", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == ALL_FILES
    for png in out.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    refs = _local_refs_only(out / "index.html")
    assert ALL_FILES - {"index.html"} <= set(refs)
    _local_refs_only(out / "token_loss.html")
    doc = json.loads((out / "inspect.json").read_text())
    assert set(doc) == {
        "attention",
        "logit_lens",
        "token_loss",
        "dla",
        "head_ablation",
        "induction",
    }
    assert doc["attention"]["tokens"] == doc["token_loss"]["tokens"]
    assert "index:" in capsys.readouterr().out


def test_analyses_subset_long_text_and_bf16(mdir, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    text = "once upon a time there was a big red book. " * 20  # far past 64 tokens
    argv = ["inspect", str(mdir), "--text", text, "--out", str(out)]
    assert main([*argv, "--analyses", "token_loss, attention", "--dtype", "bf16"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "token_loss.html",
        "attention.png",
        "inspect.json",
        "index.html",
    }
    err = capsys.readouterr().err
    assert "longer than the context (64); kept the first 64" in err
    doc = json.loads((out / "inspect.json").read_text())
    assert len(doc["token_loss"]["tokens"]) == 64 and doc["token_loss"]["notice"]
    assert "kept the first 64" in (out / "index.html").read_text()


@pytest.mark.parametrize("spec", ["attention,nope", "", "logit-lens"])
def test_unknown_analysis_is_one_line_and_writes_nothing(mdir, tmp_path, capsys, spec) -> None:
    argv = ["inspect", str(mdir), "--text", "a", "--out", str(tmp_path / "o")]
    assert main([*argv, "--analyses", spec]) == 2
    one_line_error(capsys.readouterr().err, "choose from attention, logit_lens")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("top_k", ["0", "-3", "vocab + 1"])
def test_top_k_out_of_range_is_one_line(mdir, tmp_path, capsys, top_k: str) -> None:
    vocab = load(mdir).config.vocab_size
    top_k = str(vocab + 1) if top_k == "vocab + 1" else top_k
    argv = ["inspect", str(mdir), "--text", "the dog", "--out", str(tmp_path / "o")]
    assert main([*argv, "--top-k", top_k]) == 2
    one_line_error(capsys.readouterr().err, "--top-k must be", f"got {top_k}")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_unwritable_out_refused_before_loading(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr("lumenlm.modelio.load", lambda *a, **k: pytest.fail("loaded"))
    for out in (tmp_path / "afile", tmp_path / "afile" / "o"):
        assert main(["inspect", str(tmp_path), "--text", "a", "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, f"--out {out}")


def test_a_failing_analysis_leaves_whole_files_and_no_index(mdir, tmp_path, monkeypatch) -> None:
    from lumenlm.inspect import write_report

    def fail(*args, **kwargs):
        raise RuntimeError("killed mid-report")

    monkeypatch.setattr("lumenlm.inspect.ablation.compute", fail)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="mid-report"):
        write_report(load(mdir), "the cat sat", out, "attention,head_ablation")
    assert [p.name for p in out.iterdir()] == ["attention.png"]  # no temp file, no index
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
