"""Exact resume: interrupted + resumed runs end bit-identical to uninterrupted ones (CPU),
and the rules of resuming (what may change, changed data, crashed renames, best/,
early-stopped runs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lumenlm.data.windows import WindowDataset
from lumenlm.errors import ConfigError, DataError
from lumenlm.train import data as data_mod
from lumenlm.train import train
from lumenlm.train.runs import summarize_run
from train_helpers import (
    REPO,
    assert_same_state,
    make_dataset,
    only_run,
    overrides,
    resume_argv,
    run_cli,
    run_config,
    slow_lumenlm,
    train_argv,
    train_tiny,
    weights,
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
        stop_at_step=k,
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
    r = run_cli(train_argv(dataset, out, sets=SUB_RECIPE))
    assert r.returncode == 0, r.stderr
    return only_run(out)


def _start(dataset: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*slow_lumenlm(0.3), *train_argv(dataset, out, sets=SUB_RECIPE)],
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
    r = run_cli(resume_argv(run))
    assert r.returncode == 0, r.stderr
    assert_same_state(run, cli_reference)


def test_kill_9_then_resume_from_last_checkpoint(
    dataset: Path, cli_reference: Path, tmp_path: Path
) -> None:
    proc = _start(dataset, tmp_path)
    run = _wait_for_step(tmp_path, 5, proc)
    proc.kill()
    proc.communicate()
    r = run_cli(resume_argv(run))
    assert r.returncode == 0, r.stderr
    assert_same_state(run, cli_reference)


# -- the rules of resuming: a run of 12 planned steps paused at step 3 --------------------


def _resume(run: Path, **over: object) -> Path:
    return train(resume=run, overrides=over or None, device="cpu", progress_bar=False)


@pytest.fixture(scope="module")
def paused(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 12 planned steps paused at step 3 (step_2 and last at 3)."""
    return train_tiny(dataset, tmp_path_factory.mktemp("paused"), stop=3)


@pytest.fixture(scope="module")
def uninterrupted(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 12 planned steps in one go."""
    return train_tiny(dataset, tmp_path_factory.mktemp("uninterrupted"))


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def _state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("key", ["lr", "weight_decay", "train.seed", "batch_size", "model.d_ff"])
def test_resume_refuses_overrides_that_break_exact_resume(
    paused: Path, tmp_path: Path, key: str
) -> None:
    run = _copy(paused, tmp_path)
    with pytest.raises(ConfigError) as err:
        _resume(run, **{key: 3})
    msg = str(err.value)
    hint = " or add --reset-lr-schedule" if key == "lr" else ""  # the lr may change if asked
    assert msg == (
        f"cannot change {key} when resuming (it would break exact resume); start a new run" + hint
    )


def test_resume_of_a_run_saved_by_an_earlier_version(
    paused: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """Run configs from before `tf32` existed, with the retired `num_workers`, resume."""
    run = _copy(paused, tmp_path)
    doc = run_config(run)
    doc["train"]["num_workers"] = 0
    del doc["train"]["tf32"]
    (run / "config.json").write_text(json.dumps(doc))
    _resume(run)
    _same_weights(run, uninterrupted)


def test_resume_allows_restating_the_same_value(paused: Path, tmp_path: Path) -> None:
    run = _copy(paused, tmp_path)
    lr = run_config(run)["train"]["lr"]
    _resume(run, lr=lr, max_steps=4)  # lr unchanged: fine
    assert _state(run / "checkpoints/last")["step"] == 4


def test_resume_max_steps_replans_and_is_recorded(
    paused: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(paused, tmp_path)
    _resume(run, max_steps=5, log_interval=2)
    assert "re-planned" in capsys.readouterr().err
    assert _state(run / "checkpoints/last")["step"] == 5
    cfg = run_config(run)
    assert cfg["train"]["max_steps"] == 5 and cfg["train"]["log_interval"] == 2
    assert cfg["total_steps"] == 5
    # a later resume sees the recorded change: nothing left to do
    _resume(run, max_steps=6)
    assert _state(run / "checkpoints/last")["step"] == 6
    assert run_config(run)["train"]["max_steps"] == 6


def test_sampler_refuses_another_seed() -> None:
    a = data_mod.StepSampler(100, 1, 4, 1)
    a.advance()
    b = data_mod.StepSampler(100, 2, 4, 1)
    with pytest.raises(ConfigError, match="seed 1, not 2"):
        b.load_state_dict(a.state_dict())


def test_resume_refuses_changed_data(dataset: Path, paused: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    run = _copy(paused, tmp_path)
    cfg = run_config(run)
    assert (
        cfg["data_sha256"]["train.bin"]
        == json.loads((dataset / "meta.json").read_text())["splits"]["train"]["sha256"]
    )
    cfg["data_dir"] = str(data)
    (run / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["train"]["sha256"] = "0" * 64
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as err:
        _resume(run)
    assert str(err.value) == (
        f"data in {data} changed since this run started (train.bin sha256 differs); "
        "resume needs the same prepared data"
    )


def test_resume_after_crash_between_renames(
    paused: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = _copy(paused, tmp_path)
    root = run / "checkpoints"
    # the crash: old `last` (here step 2) moved aside, the new one (step 3) complete in tmp
    os.replace(root / "last", root / ".last.tmp.k3j2x9ab")
    os.replace(root / "step_2", root / ".last.old.99999")
    shutil.rmtree(root / "best", ignore_errors=True)  # only the leftovers remain
    _resume(run)
    _same_weights(run, uninterrupted)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_pause_and_resume_picks_the_same_best(dataset: Path, tmp_path: Path) -> None:
    # min_delta so large that only the first tracked evaluation can become best
    kw = {"eval_interval": 10, "early_stopping_min_delta": 10.0}
    ref = train_tiny(dataset, tmp_path / "a", **kw)
    run = train_tiny(dataset, tmp_path / "b", stop=7, **kw)
    closing = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    closing = [r for r in closing if r.get("val_loss") is not None]
    assert [(r["step"], r.get("closing")) for r in closing] == [(7, True)]
    # No counted evaluation yet: best/ holds the paused weights provisionally ...
    assert _state(run / "checkpoints/best")["step"] == 7
    assert summarize_run(run)["best_step"] is None
    _resume(run)  # ... and the first counted evaluation replaces them.
    _same_weights(run / "checkpoints/best", ref / "checkpoints/best")
    assert _state(run / "checkpoints/best")["step"] == 10
    assert summarize_run(run)["best_step"] == summarize_run(ref)["best_step"] == 10


def test_resume_of_early_stopped_run_does_not_train(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train_tiny(
        dataset,
        tmp_path,
        max_steps=20,
        eval_interval=2,
        early_stopping_patience=1,
        early_stopping_min_delta=10.0,
    )
    assert run_config(run)["status"] == "early_stopped"
    assert _state(run / "checkpoints/last")["step"] == 4
    capsys.readouterr()
    _resume(run)
    assert "already stopped early" in capsys.readouterr().err
    assert _state(run / "checkpoints/last")["step"] == 4
    assert run_config(run)["status"] == "early_stopped"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4
