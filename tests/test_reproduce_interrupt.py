"""Ctrl-C in the middle of a reproduction's training, then the same command again: the
second call skips what is done, resumes the run from its checkpoint with the budget it
has left, and finishes every step. The first call tells the user to do exactly that."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumenlm.reproduce import cards, pipeline
from lumenlm.reproduce.cards import Card

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CARD = Card(key="tiny", title="Tiny Test Card", preset="tiny", dataset="tinyshakespeare",
            metrics={"loss": 3.25, "perplexity": 25.79}, data_note="Tiny Shakespeare")  # fmt: skip
BUDGET = 0.5  # minutes: far more than the steps done before the interrupt
SCRIPT = f"""
import sys
from lumenlm.reproduce import cards, pipeline
from lumenlm.reproduce.cards import Card
from lumenlm.errors import LumenError
cards.CARDS["tiny"] = Card(key="tiny", title="Tiny Test Card", preset="tiny",
    dataset="tinyshakespeare", metrics={{"loss": 3.25, "perplexity": 25.79}},
    data_note="Tiny Shakespeare")
pipeline.PROMPTS["tinyshakespeare"] = "ROMEO:"
try:
    pipeline.reproduce("tiny", recipe="card", budget_minutes={BUDGET}, out=sys.argv[1],
                       data_root=sys.argv[2], device="cpu", progress=False)
except LumenError as exc:
    print("ERROR:", exc, flush=True)
    sys.exit(130)
"""


def _steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


@pytest.mark.slow  # two tiny reproductions, about a minute on 2 shared cores
def test_interrupted_reproduction_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (DATA / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"needs the shared Tiny Shakespeare file under {DATA}")
    out = tmp_path / "repro"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LUMENLM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out), str(DATA)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    run = None
    while time.monotonic() < deadline and proc.poll() is None:
        runs = sorted((out / "runs").glob("run_*")) if (out / "runs").is_dir() else []
        if runs and len(_steps(runs[-1])) >= 2:  # logged every 10 steps
            run = runs[-1]
            break
        time.sleep(0.2)
    assert run is not None, f"training never got going: {proc.communicate(timeout=60)[0]}"
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    error = next(line for line in text.splitlines() if line.startswith("ERROR:"))
    assert "lumenlm reproduce tiny" in error and "again" in error
    assert f"--out {out}" in error and f"--data-root {DATA.resolve()}" in error
    state = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    stopped_at = state["step"]
    assert stopped_at >= 10 and state["status"] != "finished"
    assert not (out / "eval.json").exists()  # nothing after training ran

    monkeypatch.setitem(cards.CARDS, "tiny", CARD)
    monkeypatch.setitem(pipeline.PROMPTS, "tinyshakespeare", "ROMEO:")
    lines: list[str] = []
    pipeline.reproduce("tiny", recipe="card", budget_minutes=BUDGET, out=out, data_root=DATA,
                       device="cpu", progress=False, say=lines.append)  # fmt: skip
    assert lines[0] == "[1/6] prepare: done already, skipped"
    assert any(line.startswith(f"resuming {run.name} at step {stopped_at}") for line in lines)
    assert sorted((out / "runs").glob("run_*")) == [run]  # the same run, continued
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] > stopped_at  # no step done twice
    for name in ("eval.json", "sample.txt", "MODEL_CARD.md", "hf/model.safetensors"):
        assert (out / name).is_file(), name
    final = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert final["elapsed_s"] <= BUDGET * 60 + 30  # the budget is the whole reproduction's
