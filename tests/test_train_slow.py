"""Long checks (run with `pytest -m slow`): the librarian card recipe on TinyStories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from train_helpers import LUMENLM, REPO, only_run, train_argv


@pytest.mark.slow
def test_librarian_three_minutes_on_tinystories(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "tinystories"
    r = subprocess.run(
        [
            *LUMENLM,
            "prepare",
            "tinystories",
            "--out",
            str(data),
            "--preset",
            "librarian-1.3m",
            "--fraction",
            "1",
            "--source",
            str(shared_data / "tinystories"),
            "--offline",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            *LUMENLM,
            *train_argv(
                data,
                tmp_path / "runs",
                preset="librarian-1.3m",
                extra=["--max-minutes", "3", "--set", "eval_batches=4", "--set", "log_interval=1"],
            ),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    for name in (
        "config.json",
        "metrics.jsonl",
        "loss_curve.png",
        "README.md",
        "checkpoints/last/model.safetensors",
        "checkpoints/best/model.safetensors",
    ):
        assert (run / name).exists(), name
    losses = [
        x["loss"]
        for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if x.get("loss") is not None
    ]
    assert len(losses) >= 4
    k = max(1, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k  # falling loss
