"""The README's main job (`make demo` runs scripts/demo.sh) works end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    env = {
        **os.environ,
        "DEMO_OUT": str(tmp_path),
        "DEMO_MINUTES": "0.5",
        "LUMENLM_DATA": str(shared_data),
    }
    res = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = sorted((tmp_path / "runs").glob("run_*"))[-1]
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "README.md", "MODEL_CARD.md"):
        assert (run / name).exists(), name
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["lm"]["loss"] < 9.0  # below the untrained ln(8000) = 8.99
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert "Once upon a time" in res.stdout
    assert "Librarian-Base-v0" in res.stdout and "MODEL_CARD.md" in res.stdout  # table, card
    assert "three commands to try" in res.stdout
