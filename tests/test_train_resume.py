"""Exact resume: interrupted + resumed runs end bit-identical to uninterrupted ones (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lumenlm.data.windows import WindowDataset
from lumenlm.train import train
from test_train_helpers import (
    LUMENLM,
    REPO,
    assert_same_state,
    make_dataset,
    only_run,
    overrides,
    run_cli,
    set_args,
)

N = 16  # planned steps; 7 optimizer steps per epoch with the data below -> crosses 2 epochs
RECIPE = {"max_steps": N, "grad_accum": 2, "dropout": 0.1, "checkpoint_interval": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(
        "tiny",
        dataset,
        tmp_path_factory.mktemp("ref"),
        overrides(**RECIPE),
        device="cpu",
        progress_bar=False,
    )


@pytest.mark.parametrize("k", [3, 7, 9])  # mid-epoch, exactly at an epoch boundary, after one
def test_resume_after_max_steps_is_bit_identical(
    dataset: Path, reference: Path, tmp_path: Path, k: int
) -> None:
    run = train(
        "tiny",
        dataset,
        tmp_path,
        overrides(**RECIPE),
        max_steps=k,
        device="cpu",
        progress_bar=False,
    )
    state = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert state["step"] == k
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, reference)
    steps = [
        r["step"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps == sorted(set(steps)) and steps[-1] == N  # no duplicated steps after resume


def test_crash_mid_accumulation_resumes_from_last_step(
    dataset: Path, reference: Path, tmp_path: Path, monkeypatch
) -> None:
    """A crash in the 2nd micro-batch of step 6 loses only that step: resume redoes it exactly."""
    calls = {"n": 0}
    original = WindowDataset.get_batch

    def crashing_batch(self, indices):  # train batches only: 2 micro-batches per step
        if len(self.tokens) == 1000:  # the train split
            calls["n"] += 1
            if calls["n"] == 5 * 2 + 2:  # step 6, micro-step 2
                raise RuntimeError("simulated crash")
        return original(self, indices)

    monkeypatch.setattr(WindowDataset, "get_batch", crashing_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            "tiny",
            dataset,
            tmp_path,
            overrides(**RECIPE, eval_interval=1000),
            device="cpu",
            progress_bar=False,
        )
    monkeypatch.setattr(WindowDataset, "get_batch", original)
    run = only_run(tmp_path)
    assert json.loads((run / "checkpoints/last/trainer_state.json").read_text())["step"] == 5
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, reference)


# -- real processes: signals and kill -9 ------------------------------------------------

SUB_RECIPE = {**RECIPE, "max_steps": 12, "checkpoint_interval": 2}


@pytest.fixture(scope="module")
def cli_reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cliref")
    r = run_cli(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            *set_args(**SUB_RECIPE),
        ]
    )
    assert r.returncode == 0, r.stderr
    return only_run(out)


def _start(dataset: Path, out: Path) -> subprocess.Popen:
    import os

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "LUMENLM_TEST_STEP_DELAY": "0.3",
    }
    return subprocess.Popen(
        [
            *LUMENLM,
            "train",
            "--preset",
            "tiny",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            *set_args(**SUB_RECIPE),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
        if runs and (runs[0] / "metrics.jsonl").exists():
            recs = [
                json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines() if x
            ]
            if recs and recs[-1]["step"] >= step:
                return runs[0]
        time.sleep(0.05)
    raise AssertionError("run did not reach the step in time")


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_signal_saves_and_resume_is_bit_identical(
    dataset: Path, cli_reference: Path, tmp_path: Path, sig: int
) -> None:
    proc = _start(dataset, tmp_path)
    run = _wait_for_step(tmp_path, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "resume with: lumenlm train --resume" in err
    step = json.loads((run / "checkpoints/last/trainer_state.json").read_text())["step"]
    assert 3 <= step < SUB_RECIPE["max_steps"]
    r = run_cli(["train", "--resume", str(run), "--device", "cpu", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert_same_state(run, cli_reference)


def test_kill_9_then_resume_from_last_checkpoint(
    dataset: Path, cli_reference: Path, tmp_path: Path
) -> None:
    proc = _start(dataset, tmp_path)
    run = _wait_for_step(tmp_path, 5, proc)
    proc.kill()
    proc.communicate()
    r = run_cli(["train", "--resume", str(run), "--device", "cpu", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert_same_state(run, cli_reference)
