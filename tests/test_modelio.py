"""Save/load model directories: identical logits, no pickles, clear errors; checksums of
sealed (manifested) dirs and the tokenizer's size and fingerprint checked on load."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from lumenlm.cli import main
from lumenlm.errors import CheckpointError
from lumenlm.model import GPT
from lumenlm.modelio import (
    load,
    save_model,
    tokenizer_fingerprint,
    verify_manifest,
    write_manifest,
)
from lumenlm.presets import get_preset
from model_helpers import (
    flip_bits,
    make_tokenizer,
    model_dir,
    one_line_error,
    other_tokenizer,
    write_dataset,
)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "lumiere-1m"])
def test_save_load_identical_logits(tmp_path, name: str) -> None:
    model = GPT(get_preset(name).model).eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load(tmp_path / "m")
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(model(x).logits, loaded(x).logits)
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_run_dir_resolves_best(tmp_path) -> None:
    model = GPT(get_preset("tiny").model)
    save_model(model, tmp_path / "run" / "checkpoints" / "best")
    assert load(tmp_path / "run").config == model.config


def test_corrupt_weights_names_file(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(tmp_path / "m")


def test_truncated_weights(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(tmp_path / "m")


def test_mismatched_config_names_file(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["model"]["d_ff"] = 96
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*shape"):
        load(tmp_path / "m")


def test_corrupt_config(tmp_path) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        load(tmp_path / "m")


def test_missing_dir() -> None:
    with pytest.raises(CheckpointError, match="no such"):
        load("/nonexistent/model")


def test_never_unpickles(tmp_path, monkeypatch) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    import pickle

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load(tmp_path / "m")


def test_strips_compile_prefix(tmp_path) -> None:
    model = GPT(get_preset("tiny").model).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    save_model(Wrapper(model), tmp_path / "m")
    x = torch.randint(0, 512, (1, 8))
    assert torch.equal(load(tmp_path / "m")(x).logits, model(x).logits)


# -- integrity: manifest.json sha256 on load -------------------------------------------


def test_bit_flipped_checkpoint_is_refused_naming_the_file(tmp_path) -> None:
    mdir = model_dir(tmp_path / "run" / "checkpoints" / "best", sealed=True)
    good = load(tmp_path / "run")
    assert flip_bits(mdir / "model.safetensors", 0.01) > 100
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch") as info:
        load(tmp_path / "run")
    assert "\n" not in str(info.value) and "--no-verify" in str(info.value)
    # the damage is real but silent: without the check it loads, finite and wrong
    flipped = load(tmp_path / "run", verify=False)
    x = torch.randint(0, 512, (1, 16))
    logits = flipped(x).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, good(x).logits)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_every_file_load_reads_is_verified(tmp_path, name: str) -> None:
    tok = make_tokenizer(tmp_path / "tok.json")
    mdir = model_dir(tmp_path / "m", tokenizer=tok, sealed=True)
    assert verify_manifest(mdir) is True
    path = mdir / name
    path.write_text(path.read_text().replace('"', ' "', 1))  # still valid JSON
    with pytest.raises(CheckpointError, match=rf"{name}: checksum mismatch"):
        load(mdir)
    load(mdir, verify=False)


def test_manifest_problems_are_one_line_errors(tmp_path) -> None:
    tok = make_tokenizer(tmp_path / "tok.json")
    mdir = model_dir(tmp_path / "m", sealed=True)
    (mdir / "tokenizer.json").write_bytes(tok.read_bytes())  # added after sealing
    with pytest.raises(CheckpointError, match="tokenizer.json: not listed in manifest.json"):
        load(mdir)
    (mdir / "tokenizer.json").unlink()
    manifest = json.loads((mdir / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = "0" * 64
    (mdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="tokenizer.json: missing"):
        load(mdir)
    del manifest["files"]["model.safetensors"]
    (mdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest does not list model.safetensors"):
        load(mdir)
    for bad in ("{", '{"files": {"../config.json": "x"}}', "[]"):
        (mdir / "manifest.json").write_text(bad)
        with pytest.raises(CheckpointError, match="manifest.json: corrupt manifest"):
            load(mdir)
    load(mdir, verify=False)


def test_no_manifest_nothing_to_verify(tmp_path) -> None:
    mdir = model_dir(tmp_path / "m")
    assert verify_manifest(mdir) is False
    flip_bits(mdir / "model.safetensors")
    load(mdir)  # a plain model dir has no digests to compare with


def test_verify_manifest_checks_all_listed_files_for_resume(tmp_path) -> None:
    mdir = model_dir(tmp_path / "ck")
    (mdir / "trainer_state.json").write_text("{}\n")
    write_manifest(mdir, {"step": 3})
    doc = json.loads((mdir / "manifest.json").read_text())
    assert doc["step"] == 3 and set(doc["files"]) == {
        "config.json",
        "model.safetensors",
        "trainer_state.json",
    }
    assert verify_manifest(mdir, required=("trainer_state.json", "model.safetensors"))
    with pytest.raises(CheckpointError, match="manifest does not list trainer_state.safetensors"):
        verify_manifest(mdir, required=("trainer_state.safetensors",))
    (mdir / "trainer_state.json").write_text("{} \n")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: checksum mismatch"):
        verify_manifest(mdir)
    load(mdir)  # load checks only the files it reads


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{m}", "--data", "{data}", "--device", "cpu"],
        ["inspect", "{m}", "--text", "the cat", "--out", "{tmp}/ins"],
        ["export", "{m}", "--out", "{tmp}/hf"],
        ["generate", "{m}", "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"],
        ["chat", "{m}", "--device", "cpu"],
    ],
    ids=["eval", "inspect", "export", "generate", "chat"],
)
def test_cli_refuses_a_corrupt_checkpoint_unless_no_verify(
    tmp_path, capsys, monkeypatch, argv
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hello\n")))  # for chat
    tok = make_tokenizer(tmp_path / "tok.json")
    mdir = model_dir(tmp_path / "run" / "checkpoints" / "best", tokenizer=tok, sealed=True)
    data = write_dataset(tmp_path / "data", np.arange(1, 200), vocab=300, tokenizer=tok)
    flip_bits(mdir / "model.safetensors")
    args = [a.format(m=tmp_path / "run", data=data, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, "model.safetensors: checksum mismatch", "--no-verify")
    assert main([*args, "--no-verify"]) == 0, capsys.readouterr().err


def test_serve_refuses_a_corrupt_checkpoint(tmp_path, capsys) -> None:
    tok = make_tokenizer(tmp_path / "tok.json")
    mdir = model_dir(tmp_path / "run" / "checkpoints" / "best", tokenizer=tok, sealed=True)
    flip_bits(mdir / "model.safetensors")
    assert main(["serve", str(tmp_path / "run"), "--port", "0", "--device", "cpu"]) == 2
    one_line_error(capsys.readouterr().err, "model.safetensors: checksum mismatch", "--no-verify")


# -- tokenizer consistency ----------------------------------------------------------------


def test_tokenizer_of_another_vocab_size_is_refused(tmp_path) -> None:
    t300, t280 = make_tokenizer(tmp_path / "t300.json"), make_tokenizer(tmp_path / "t280.json", 280)
    mdir = model_dir(tmp_path / "m", tokenizer=t300)
    (mdir / "tokenizer.json").write_bytes(t280.read_bytes())  # ids 280..299 undecodable
    for verify in (True, False):  # a wrong size never works, so no switch skips it
        with pytest.raises(
            CheckpointError, match=r"tokenizer\.json: 280 tokens.*vocab_size is 300"
        ):
            load(mdir, verify=verify)
    # more ids than the model has rows: refused even when saved together
    with pytest.raises(CheckpointError, match="300 tokens, but the model's vocab_size is 280"):
        load(model_dir(tmp_path / "big", tokenizer=t300, vocab=280))


def test_padded_vocab_saved_with_its_tokenizer_loads(tmp_path) -> None:
    tok = make_tokenizer(tmp_path / "t.json", 280)
    mdir = model_dir(tmp_path / "m", tokenizer=tok, vocab=320)  # rows 280..319: padding
    assert load(mdir).config.vocab_size == 320
    doc = json.loads((mdir / "config.json").read_text())
    del doc["tokenizer_sha256"]  # nothing says this smaller tokenizer is the model's own
    (mdir / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="280 tokens, but the model's vocab_size is 320"):
        load(mdir)


def test_tokenizer_fingerprint_is_recorded_and_checked(tmp_path) -> None:
    tok = make_tokenizer(tmp_path / "tok.json")
    mdir = model_dir(tmp_path / "m", tokenizer=tok)
    digest = hashlib.sha256(tok.read_bytes()).hexdigest()
    assert json.loads((mdir / "config.json").read_text())["tokenizer_sha256"] == digest
    assert tokenizer_fingerprint(load(mdir)) == digest
    # same size, other ids: only the fingerprint tells
    other_tokenizer(tok, mdir / "tokenizer.json")
    with pytest.raises(CheckpointError, match="not the tokenizer this model was saved with"):
        load(mdir)
    assert load(mdir, verify=False).tokenizer.token_to_id("a") == 66
    # a model dir from before the record: the file's own digest is its fingerprint
    doc = json.loads((mdir / "config.json").read_text())
    del doc["tokenizer_sha256"]
    (mdir / "config.json").write_text(json.dumps(doc))
    other = hashlib.sha256((mdir / "tokenizer.json").read_bytes()).hexdigest()
    assert tokenizer_fingerprint(load(mdir)) == other
    assert tokenizer_fingerprint(GPT(get_preset("tiny").model)) is None
