"""CLI contract for the core commands: presets, export, error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lumenlm.cli import main
from lumenlm.model import GPT
from lumenlm.modelio import save_model
from lumenlm.presets import get_preset


def test_presets_table(capsys) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("librarian-1.3m", "lumiere-1m", "lumenbase-128m"):
        assert name in out
    assert "1,305,600" in out and "128,404,224" in out


def test_presets_json(capsys) -> None:
    assert main(["presets", "--json"]) == 0
    rows = {r["name"]: r["parameters"] for r in json.loads(capsys.readouterr().out)}
    assert rows["librarian-1.3m"] == 1_305_600


def test_console_script_presets() -> None:
    script = Path(sys.executable).parent / "lumenlm"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lumenlm"]
    out = subprocess.run([*cmd, "presets"], capture_output=True, text=True, check=True)
    assert "librarian-1.3m" in out.stdout


def test_unknown_preset_one_line_error(capsys) -> None:
    assert main(["presets", "--show", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown preset 'nope'" in err and "Traceback" not in err


def test_export_cli(tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    save_model(GPT(get_preset("tiny-gpt2").model), tmp_path / "m")
    assert (
        main(["export", str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    )
    assert (tmp_path / "hf" / "config.json").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"


def test_export_missing_model_one_line(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "hf")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such model" in err
