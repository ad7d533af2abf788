"""Bad input to `lumenlm export` and `lumenlm import` is one line on stderr with a
non-zero exit, and nothing half-written is left: weights that do not match their config,
an unknown --format, an existing --out without --force, an HF directory of an
unsupported architecture or with pickled weights only, and a failure mid-write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_helpers import arch_model_dir
from lumenlm.cli import main
from model_helpers import one_line_error

pytest.importorskip("gguf", reason="pip install 'lumenlm[gguf]' for GGUF export")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _mismatched(tmp_path: Path) -> Path:
    mdir = arch_model_dir(tmp_path, "llama")
    doc = json.loads((mdir / "config.json").read_text())
    doc["model"]["n_layers"] += 1
    (mdir / "config.json").write_text(json.dumps(doc))
    return mdir


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_weights_not_matching_config(tmp_path, capsys, fmt: str) -> None:
    mdir = _mismatched(tmp_path)
    out = tmp_path / ("o.gguf" if fmt == "gguf" else "o")
    assert main(["export", str(mdir), "--format", fmt, "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, "weights do not match config.json")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_unknown_format(tmp_path, capsys) -> None:
    mdir = arch_model_dir(tmp_path, "llama")
    with pytest.raises(SystemExit) as exit_:  # argparse exits from inside main
        main(["export", str(mdir), "--format", "onnx", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    one_line_error(capsys.readouterr().err, "invalid choice: 'onnx'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_existing_out_needs_force(tmp_path, capsys, fmt: str) -> None:
    mdir = arch_model_dir(tmp_path, "gpt2")
    out = tmp_path / ("o.gguf" if fmt == "gguf" else "o")
    if fmt == "gguf":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    argv = ["export", str(mdir), "--format", fmt, "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, "already exists", "--force")
    assert (out if fmt == "gguf" else out / "notes.txt").read_text() == "mine"
    assert main([*argv, "--force"]) == 0
    assert out.is_file() if fmt == "gguf" else (out / "config.json").is_file()
    assert _leftovers(tmp_path) == []


def test_import_refuses_existing_out_and_unsupported_architectures(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    src = tmp_path / "neox"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
    )
    save_file({"x": __import__("torch").zeros(1)}, str(src / "model.safetensors"))
    assert main(["import", str(src), "--out", str(tmp_path / "lm")]) == 2
    one_line_error(capsys.readouterr().err, "'GPTNeoXForCausalLM' is not supported")
    assert not (tmp_path / "lm").exists()

    hf = tmp_path / "hf"
    assert main(["export", str(arch_model_dir(tmp_path, "llama")), "--out", str(hf)]) == 0
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["import", str(hf), "--out", str(tmp_path / "lm")]) == 2
    one_line_error(capsys.readouterr().err, "already exists", "--force")
    assert (tmp_path / "lm" / "keep.txt").read_text() == "mine"

    (hf / "model.safetensors").rename(hf / "pytorch_model.bin")
    assert main(["import", str(hf), "--out", str(tmp_path / "lm2")]) == 2
    one_line_error(capsys.readouterr().err, "only pickled weights", "safetensors")


def test_import_of_weights_not_matching_config(tmp_path, capsys) -> None:
    hf = tmp_path / "hf"
    assert main(["export", str(arch_model_dir(tmp_path, "gpt2")), "--out", str(hf)]) == 0
    doc = json.loads((hf / "config.json").read_text())
    doc["n_layer"] += 1
    (hf / "config.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["import", str(hf), "--out", str(tmp_path / "lm")]) == 2
    one_line_error(capsys.readouterr().err, "weights do not match config.json")
    assert not (tmp_path / "lm").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["hf", "gguf", "import"])
def test_a_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, fmt: str) -> None:
    import gguf

    import lumenlm.export.hf_import as hf_import
    from lumenlm.export.gguf import export_gguf
    from lumenlm.export.hf import export_hf
    from lumenlm.modelio import load

    model = load(arch_model_dir(tmp_path, "llama"))
    hf = export_hf(model, tmp_path / "hf") if fmt == "import" else None

    def boom(*a, **k):
        raise OSError("disk full")

    if fmt == "gguf":
        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    elif fmt == "hf":
        monkeypatch.setattr("lumenlm.export.hf.write_tokenizer_files", boom)
    else:
        monkeypatch.setattr(hf_import, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        if fmt == "gguf":
            export_gguf(model, tmp_path / "o.gguf")
        elif fmt == "hf":
            export_hf(model, tmp_path / "o")
        else:
            hf_import.import_hf(hf, tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()
    assert _leftovers(tmp_path) == []


def test_outtype_without_gguf_is_refused(tmp_path, capsys) -> None:
    mdir = arch_model_dir(tmp_path, "llama")
    assert main(["export", str(mdir), "--outtype", "q8_0", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys.readouterr().err, "--outtype is for --format gguf")
    assert not (tmp_path / "o").exists()
    out = tmp_path / "m.gguf"
    assert (
        main(["export", str(mdir), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)]) == 0
    )
    assert "(q8_0)" in capsys.readouterr().out and out.is_file()
