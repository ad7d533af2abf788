"""`lumenlm prepare` end to end: outputs, determinism, round trips, bad input, atomicity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import REPO, STORIES, require_shared, write_stories
from lumenlm.cli import main
from lumenlm.data.prepare import PrepareConfig, cleaned_documents, prepare_dataset
from lumenlm.data.tokenizer import decode, load_tokenizer
from lumenlm.data.tokens import load_split, read_meta

OUT_FILES = ["meta.json", "test.bin", "tokenizer.json", "train.bin", "val.bin"]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _assert_round_trip(out: Path, config: PrepareConfig) -> None:
    """Every document decodes back to exactly its cleaned text, split by split."""
    tok = load_tokenizer(out)
    meta = read_meta(out)
    expected: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, text in cleaned_documents(config):
        expected[split].append(text)
    for split, docs in expected.items():
        ids = np.asarray(load_split(out, split))
        ends = np.flatnonzero(ids == meta["eot_id"])
        assert len(ends) == len(docs) == meta["splits"][split]["documents"]
        assert ends[-1] == len(ids) - 1  # every document, the last included, ends with EOT
        starts = np.concatenate([[0], ends[:-1] + 1])
        for doc, s, e in zip(docs, starts, ends):
            assert decode(tok, ids[s:e].tolist()) == doc
        assert sum(len(d.encode()) for d in docs) == meta["splits"][split]["bytes"]


def _corpus(tmp_path: Path) -> Path:
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for i in range(40):
        (src / f"doc{i:02d}.txt").write_text(f"{STORIES[i % 6]}\r\nNumber {i}.  \n\n\n\nEnd {i}.\n")
    lines = [json.dumps({"text": f"{s} json {i}", "id": i}) for i, s in enumerate(STORIES * 5)]
    (src / "sub" / "extra.jsonl").write_text("\n".join(lines) + "\n")
    return src


def test_prepare_text_outputs_meta_and_round_trip(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    config = PrepareConfig(
        dataset="text",
        out=tmp_path / "out",
        source=str(src),
        vocab_size=350,
        val_ratio=0.2,
        test_ratio=0.2,
        progress=False,
    )
    meta = prepare_dataset(config)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == OUT_FILES
    for key in (
        "vocab_size",
        "dtype",
        "eot_id",
        "pad_id",
        "special_tokens",
        "splits",
        "bytes_per_token",
        "source",
        "tokenizer",
        "cleaning",
        "version",
    ):
        assert key in meta
    assert meta["dtype"] == "uint16" and meta["eot_id"] == 0 and meta["pad_id"] == 1
    assert sum(s["documents"] for s in meta["splits"].values()) == 70
    for split, s in meta["splits"].items():
        assert s["tokens"] == s["content_tokens"] + s["documents"]
        assert meta["bytes_per_token"][split] == round(s["bytes"] / s["content_tokens"], 6)
        assert hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest() == s["sha256"]
    assert (
        meta["tokenizer"]["sha256"]
        == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    )
    names = [f["name"] for f in meta["source"]["files"]]
    assert names[0] == "doc00.txt" and names[-1] == "sub/extra.jsonl"  # relative, sorted
    assert str(tmp_path) not in (out / "meta.json").read_text()
    _assert_round_trip(out, config)
    # cleaning happened: CRLF gone, blank-line runs collapsed, ends stripped
    docs = [t for _, t in cleaned_documents(config)]
    assert docs[0] == f"{STORIES[0]}\nNumber 0.\n\nEnd 0."


def test_prepare_is_byte_identical_and_force_replaces(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    args = [
        "prepare",
        "text",
        "--source",
        str(src),
        "--vocab-size",
        "300",
        "--dedup",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert main([*args, "--out", str(tmp_path / "a"), "--vocab-size", "320", "--force"]) == 0
    assert read_meta(tmp_path / "a")["tokenizer"]["vocab_size_requested"] == 320
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_reuse_tokenizer_and_fraction(tmp_path: Path) -> None:
    src = tmp_path / "ts"
    src.mkdir()
    write_stories(src / "TinyStories-train.txt", n=400)
    write_stories(src / "TinyStories-valid.txt", n=40)
    (src / "TinyStories-valid.txt").write_text(
        (src / "TinyStories-valid.txt").read_text().replace("Story", "Valid story")
    )
    full = prepare_dataset(
        PrepareConfig(
            dataset="tinystories",
            out=tmp_path / "full",
            source=str(src),
            vocab_size=300,
            progress=False,
        )
    )
    assert full["splits"]["train"]["documents"] == 400
    assert full["source"]["notes"] == []
    part = prepare_dataset(
        PrepareConfig(
            dataset="tinystories",
            out=tmp_path / "part",
            source=str(src),
            tokenizer=str(tmp_path / "full"),
            fraction=0.25,
            progress=False,
        )
    )
    assert 60 < part["splits"]["train"]["documents"] < 140
    assert part["splits"]["val"] == full["splits"]["val"]  # fraction only thins train
    assert part["tokenizer"]["sha256"] == full["tokenizer"]["sha256"]
    assert part["tokenizer"]["trained"] is False


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0, argv
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_bad_inputs_fail_with_one_line_and_leave_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    base = ["prepare", "text", "--out", str(out), "--vocab-size", "300", "--no-progress"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in _one_line_error(capsys, [*base, "--source", str(empty)])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("fine text here\n")
    (bad / "b.txt").write_bytes(b"ok\nnot utf8 \xc3\x28 here\n")
    msg = _one_line_error(capsys, [*base, "--source", str(bad), "--doc-sep", "blank"])
    assert "b.txt is not valid UTF-8 (byte offset 12)" in msg
    nothing = tmp_path / "nothing"
    (nothing / "deep").mkdir(parents=True)
    (nothing / "deep" / "notes.md").write_text("not a txt")
    assert "no .txt or .jsonl" in _one_line_error(capsys, [*base, "--source", str(nothing)])
    good = _corpus(tmp_path)
    msg = _one_line_error(capsys, [*base[:-3], "--vocab-size", "200", "--source", str(good)])
    assert "--vocab-size 200 is too small" in msg
    jl = tmp_path / "j.jsonl"
    jl.write_text('{"text": "a"}\n{"text": oops}\n')
    assert "j.jsonl:2: malformed JSON" in _one_line_error(capsys, [*base, "--source", str(jl)])
    assert "--val-ratio" in _one_line_error(
        capsys, [*base, "--source", str(good), "--val-ratio", "0.6", "--test-ratio", "0.5"]
    )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert "--force" in _one_line_error(capsys, [*base, "--source", str(good)])
    assert (out / "keep.txt").read_text() == "precious"


def test_token_id_beyond_dtype_is_an_error(tmp_path: Path, capsys) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = ["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tokens += [f"tok{i}" for i in range(70_000)]
    tokens += ["Ġt", "Ġte", "Ġtex", "Ġtext"]  # ids > 65535, used by the corpus below
    merges = [("Ġ", "t"), ("Ġt", "e"), ("Ġte", "x"), ("Ġtex", "t")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(tmp_path / "big.json"))
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i} has text"}) + "\n" for i in range(30)))
    out = tmp_path / "out"
    base = [
        "prepare",
        "text",
        "--source",
        str(src),
        "--out",
        str(out),
        "--tokenizer",
        str(tmp_path / "big.json"),
        "--val-ratio",
        "0.3",
        "--test-ratio",
        "0.3",
        "--no-progress",
    ]
    assert "does not fit uint16" in _one_line_error(capsys, [*base, "--dtype", "uint16"])
    assert not out.exists()
    assert main(base) == 0  # auto picks uint32 and keeps the big ids intact
    assert read_meta(out)["dtype"] == "uint32"
    ids = np.asarray(load_split(out, "train"))
    assert ids.dtype == np.uint32 and int(ids.max()) == len(tokens) - 1
    assert decode(load_tokenizer(out), ids[: list(ids).index(0)].tolist()).endswith("has text")


def test_cli_subprocess_bad_input(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "lumenlm"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "lumenlm.cli"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    res = subprocess.run(
        [*cmd, "prepare", "text", "--source", str(empty), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "is empty" in res.stderr
    assert not (tmp_path / "o").exists()


def test_local_tinystories_round_trip(tmp_path: Path) -> None:
    src = require_shared("tinystories")
    config = PrepareConfig(
        dataset="tinystories", out=tmp_path / "ts", source=str(src), vocab_size=8000, progress=False
    )
    meta = prepare_dataset(config)
    assert meta["splits"]["train"]["documents"] == 2316 + 2997
    assert meta["source"]["notes"] and "partial pieces" in meta["source"]["notes"][0]
    _assert_round_trip(tmp_path / "ts", config)


def test_local_wikitext_round_trip_and_honest_notes(tmp_path: Path, monkeypatch) -> None:
    root = require_shared("wikitext-2-raw").parent
    monkeypatch.setenv("LUMENLM_DATA", str(root))
    config = PrepareConfig(
        dataset="wikitext-2", out=tmp_path / "wt", vocab_size=1000, progress=False
    )
    meta = prepare_dataset(config)
    files = {f["name"]: f for f in meta["source"]["files"]}
    assert all(f["matches_official_sha256"] for f in files.values())
    if "wiki.train.raw" not in files:
        assert "NOT comparable" in meta["source"]["notes"][0]
        assert meta["splits"]["test"]["bytes"] == files["wiki.test.raw"]["bytes"]  # kept as-is
    _assert_round_trip(tmp_path / "wt", config)


def test_local_tinyshakespeare_contiguous(tmp_path: Path) -> None:
    src = require_shared("tinyshakespeare")
    meta = prepare_dataset(
        PrepareConfig(
            dataset="tinyshakespeare",
            out=tmp_path / "sh",
            source=str(src),
            vocab_size=500,
            progress=False,
        )
    )
    assert [meta["splits"][s]["documents"] for s in ("train", "val", "test")] == [1, 1, 1]
    assert "[0, 36000) train" in meta["source"]["split_rule"]
    tok = load_tokenizer(tmp_path / "sh")
    ids = np.asarray(load_split(tmp_path / "sh", "train"))
    assert decode(tok, ids[:-1].tolist()).startswith("First Citizen:\nBefore we proceed")


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prepare", flag])
    assert exc.value.code == 0
    assert "--vocab-size" in capsys.readouterr().out


def test_failure_mid_encoding_keeps_old_output(tmp_path: Path, monkeypatch) -> None:
    from lumenlm.data import tokens
    from lumenlm.errors import DataError

    src = _corpus(tmp_path)
    out = tmp_path / "out"
    config = PrepareConfig(dataset="text", out=out, source=str(src), vocab_size=300, progress=False)
    prepare_dataset(config)
    before = _digests(out)

    def boom(self, ids) -> None:
        raise DataError("simulated failure while writing tokens")

    monkeypatch.setattr(tokens.TokenWriter, "write", boom)
    config.force = True
    config.vocab_size = 320
    with pytest.raises(DataError, match="simulated"):
        prepare_dataset(config)
    assert _digests(out) == before  # the old dataset is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_preset_flags(tmp_path: Path, monkeypatch) -> None:
    root = require_shared("tinyshakespeare").parent
    monkeypatch.setenv("LUMENLM_DATA", str(root))
    assert (
        main(
            [
                "prepare",
                "tinyshakespeare",
                "--preset",
                "lumiere-1m",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 0
    )
    meta = read_meta(tmp_path / "o")
    assert meta["tokenizer"]["vocab_size_requested"] == 4096
    assert meta["special_tokens"] == {"<|endoftext|>": 0, "<|pad|>": 1}


def test_dedup_drops_repeats_and_train_copies_of_heldout(tmp_path: Path) -> None:
    src = tmp_path / "ts"
    src.mkdir()
    stories = write_stories(src / "TinyStories-train.txt", n=50)
    with open(src / "TinyStories-train.txt", "a") as f:
        f.write(f"{stories[3]}\n<|endoftext|>\n  {stories[4]}  \n<|endoftext|>\n")
    valid = [f"Held out story {i}." for i in range(20)] + [stories[7]]
    (src / "TinyStories-valid.txt").write_text("".join(f"{v}\n<|endoftext|>\n" for v in valid))
    config = PrepareConfig(
        dataset="tinystories",
        out=tmp_path / "o",
        source=str(src),
        vocab_size=300,
        dedup=True,
        progress=False,
    )
    meta = prepare_dataset(config)
    assert meta["cleaning"]["dropped_documents"]["duplicate"] == 3
    assert meta["splits"]["train"]["documents"] == 49
    assert meta["splits"]["val"]["documents"] + meta["splits"]["test"]["documents"] == 21
    _assert_round_trip(tmp_path / "o", config)


def test_prepared_split_feeds_window_and_packed_datasets(tmp_path: Path) -> None:
    from lumenlm.data.windows import PackedDataset, WindowDataset, epoch_permutation

    src = _corpus(tmp_path)
    meta = prepare_dataset(
        PrepareConfig(
            dataset="text", out=tmp_path / "o", source=str(src), vocab_size=300, progress=False
        )
    )
    train = load_split(tmp_path / "o", "train")
    windows = WindowDataset(train, 16, stride=8)
    assert len(windows) == (len(train) - 17) // 8 + 1
    packed = PackedDataset(train, 16, meta["eot_id"])
    assert len(packed) > 0
    assert all(s == 0 or train[s] == meta["eot_id"] for s in packed.starts)
    x, y = packed.get_batch(epoch_permutation(len(packed), 0, 0)[:4])
    assert x.shape == (4, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
