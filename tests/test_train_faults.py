"""Faults a training run must survive or refuse cleanly: kill -9 at random points, two
writers of one run, a stale lock, NaN and exploded weights, a full disk, hand-edited
run files, and a run killed before its first checkpoint.

The fast cases run by default; `pytest -m slow tests/test_train_faults.py` adds ten
random kill points (and the whole reliability suite is `pytest -m "slow or not slow"`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lumenlm.errors import CheckpointError, ConfigError, LumenError
from lumenlm.train import checkpoint as ckpt
from lumenlm.train import train
from lumenlm.train.runs import list_runs
from lumenlm.train.stop import TrainingError
from train_helpers import (
    REPO,
    assert_same_state,
    lumenlm_sleeping_in_checkpoint_writes,
    make_dataset,
    only_run,
    overrides,
    resume_argv,
    run_cli,
    run_config,
    slow_lumenlm,
    train_argv,
    weights,
)

# Every step checkpoints, so random kill points often land inside a checkpoint write.
PLAN = {"max_steps": 10, "checkpoint_interval": 1, "eval_interval": 4, "dropout": 0.1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    r = run_cli(train_argv(dataset, out, sets=PLAN))
    assert r.returncode == 0, r.stderr
    return only_run(out)


def _start(dataset: Path, out: Path, delay: float, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = list(argv) or train_argv(dataset, out, sets=PLAN)
    return subprocess.Popen(
        [*slow_lumenlm(delay), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    raise AssertionError("the run did not get there in time")


def _first_run(out: Path) -> Path | None:
    runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return runs[0] if runs else None


def _kill_and_resume(dataset: Path, reference: Path, tmp_path: Path, seed: int) -> None:
    """kill -9 at a random moment after the first checkpoint, resume, compare bit-for-bit."""
    rng = random.Random(seed)
    proc = _start(dataset, tmp_path, delay=rng.choice([0.0, 0.02, 0.05]))

    def has_checkpoint() -> bool:
        run = _first_run(tmp_path)
        return run is not None and (run / "checkpoints" / "last").is_dir()

    _wait_for(has_checkpoint, proc)
    time.sleep(rng.uniform(0.0, 1.2))
    run = _kill_resume_compare(proc, tmp_path, reference)
    assert run_config(run)["status"] == "finished"


def _kill_resume_compare(proc: subprocess.Popen, out: Path, reference: Path) -> Path:
    """kill -9 the run in `out`, resume it to the end, and compare it with `reference`."""
    proc.kill()
    proc.communicate()
    run = _first_run(out)
    assert run is not None
    r = run_cli(resume_argv(run))
    assert r.returncode == 0, r.stderr
    assert_same_state(run, reference)
    return run


# seed 1 joins test_kill_9_at_ten_more_random_points under -m slow (the default suite
# keeps one random point: about 15 s each on 2 cores)
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_kill_9_at_a_random_point_resumes_bit_identically(
    dataset: Path, reference: Path, tmp_path: Path, seed: int
) -> None:
    _kill_and_resume(dataset, reference, tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 110))
def test_kill_9_at_ten_more_random_points(
    dataset: Path, reference: Path, tmp_path: Path, seed: int
) -> None:
    _kill_and_resume(dataset, reference, tmp_path, seed)


def test_kill_9_inside_a_checkpoint_write_resumes_bit_identically(
    dataset: Path, reference: Path, tmp_path: Path
) -> None:
    """Killed while checkpoints/.last.tmp.* holds weights but no manifest yet."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*lumenlm_sleeping_in_checkpoint_writes(2.0), *train_argv(dataset, tmp_path, sets=PLAN)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def mid_write() -> bool:
        run = _first_run(tmp_path)
        if run is None or not (run / "checkpoints" / "last").is_dir():
            return False  # wait for the second write: one good checkpoint exists by then
        tmp = [p for p in (run / "checkpoints").iterdir() if ".tmp." in p.name]
        return any((p / "model.safetensors").exists() for p in tmp)

    _wait_for(mid_write, proc, timeout=180)
    run = _kill_resume_compare(proc, tmp_path, reference)
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp." in p.name]


def test_second_writer_is_refused_and_a_killed_ones_lock_taken_over(
    dataset: Path, reference: Path, tmp_path: Path
) -> None:
    first = _start(dataset, tmp_path, delay=2.0)  # 10 steps: 20 s, time to try a second
    _wait_for(
        lambda: (r := _first_run(tmp_path)) is not None and (r / "metrics.jsonl").exists(), first
    )
    run = _first_run(tmp_path)
    assert run is not None
    second = run_cli(resume_argv(run))
    assert first.poll() is None, "the first writer finished too soon for this test"
    assert second.returncode != 0
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"is being trained by process {first.pid}" in lines[0], lines
    first.kill()  # leaves its lock file behind, with its pid
    first.communicate()
    r = run_cli(resume_argv(run))
    assert r.returncode == 0, r.stderr
    assert f"took over the lock of process {first.pid}" in r.stderr
    steps = [
        rec["step"]
        for rec in map(json.loads, (run / "metrics.jsonl").read_text().split("\n")[:-1])
        if "loss" in rec
    ]
    assert len(steps) == len(set(steps)), "metrics.jsonl holds duplicate rows"
    assert_same_state(run, reference)


def _train(dataset: Path, out: Path, **kw: object) -> Path:
    on_step = kw.pop("on_step", None)
    return train(
        "tiny", dataset, out, overrides(**{**PLAN, **kw}), device="cpu", progress_bar=False,
        on_step=on_step,  # type: ignore[arg-type]
    )  # fmt: skip


def _poison(value: float, at_step: int):  # type: ignore[no-untyped-def]
    def on_step(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.p.step == at_step:
            with torch.no_grad():
                next(trainer.raw.parameters()).view(-1)[0] = value

    return on_step


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e6])
def test_poisoned_weights_are_never_checkpointed(
    dataset: Path, tmp_path: Path, value: float
) -> None:
    with pytest.raises(TrainingError) as err:
        _train(dataset, tmp_path, on_step=_poison(value, at_step=3))
    msg = str(err.value)
    assert "\n" not in msg and "--reset-lr-schedule" in msg, msg
    run = only_run(tmp_path)
    assert run_config(run)["status"] == "diverged"
    for c in (run / "checkpoints").iterdir():
        assert ckpt.largest_weight_of(c) < ckpt.EXPLODED, c.name
    state = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert state["step"] == 3


def test_a_huge_lr_keeps_a_good_checkpoint_and_can_resume_lower(
    dataset: Path, tmp_path: Path
) -> None:
    r = run_cli(train_argv(dataset, tmp_path, sets={**PLAN, "lr": 1e6}))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("lumenlm train: error:")
    run = only_run(tmp_path)
    for c in (run / "checkpoints").iterdir():
        assert ckpt.largest_weight_of(c) < ckpt.EXPLODED, c.name
    if (run / "checkpoints" / "last").exists():
        extra = ["--reset-lr-schedule", "--set", "lr=0.001"]
        ok = run_cli(resume_argv(run, extra=extra))
        assert ok.returncode == 0, ok.stderr
        assert "no longer bit-identical" in ok.stderr


def test_lr_changes_on_resume_only_when_asked(dataset: Path, tmp_path: Path) -> None:
    run = train(
        "tiny", dataset, tmp_path, overrides(**PLAN), stop_at_step=3, device="cpu",
        progress_bar=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--reset-lr-schedule"):
        train(resume=run, overrides={"lr": 1e-4}, device="cpu", progress_bar=False)
    train(
        resume=run, overrides={"lr": 1e-4}, reset_lr_schedule=True, stop_at_step=5,
        device="cpu", progress_bar=False,
    )  # fmt: skip
    assert run_config(run)["train"]["lr"] == 1e-4
    # the new lr is now the run's own: a plain resume goes on without the flag
    train(resume=run, device="cpu", progress_bar=False)
    assert run_config(run)["status"] == "finished"


def test_hand_edited_batch_size_is_refused(dataset: Path, tmp_path: Path) -> None:
    run = train(
        "tiny", dataset, tmp_path, overrides(**PLAN), stop_at_step=2, device="cpu",
        progress_bar=False,
    )  # fmt: skip
    doc = run_config(run)
    doc["train"]["batch_size"] *= 2
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="was config.json edited"):
        train(resume=run, device="cpu", progress_bar=False)


def test_run_killed_before_its_first_checkpoint(dataset: Path, tmp_path: Path) -> None:
    proc = _start(
        dataset,
        tmp_path,
        5.0,
        *train_argv(dataset, tmp_path, sets={**PLAN, "checkpoint_interval": 1000}),
    )
    _wait_for(
        lambda: (r := _first_run(tmp_path)) is not None and (r / "metrics.jsonl").exists(), proc
    )
    proc.kill()
    proc.communicate()
    run = _first_run(tmp_path)
    assert run is not None
    with pytest.raises(CheckpointError, match="start a new run"):
        train(resume=run, device="cpu", progress_bar=False)


def test_garbage_in_metrics_breaks_nothing(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train(
        "tiny", dataset, tmp_path, overrides(**PLAN), stop_at_step=3, device="cpu",
        progress_bar=False,
    )  # fmt: skip
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(os.urandom(256) + b"\n[1, 2]\n\xff\xfe\n")
    rows = list_runs(tmp_path)
    assert rows[0]["steps"] == 3
    assert "unreadable line" in capsys.readouterr().err
    train(resume=run, device="cpu", progress_bar=False)
    assert run_config(run)["status"] == "finished"


def test_full_disk_says_what_happened_and_that_the_run_resumes(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train(
        "tiny", dataset, tmp_path, overrides(**PLAN), stop_at_step=2, device="cpu",
        progress_bar=False,
    )  # fmt: skip
    good = weights(run)

    def full(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_checkpoint", full)
    with pytest.raises(LumenError) as err:
        train(resume=run, device="cpu", progress_bar=False)
    msg = str(err.value)
    assert "No space left on device" in msg and "--resume" in msg and "\n" not in msg
    monkeypatch.undo()
    after = weights(run)
    assert all(torch.equal(good[k], after[k]) for k in good)  # the checkpoint is intact
    train(resume=run, device="cpu", progress_bar=False)


def _tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_real_full_disk(dataset: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("needs root and a tmpfs mount to make a small disk")
    try:
        r = run_cli(train_argv(dataset, disk, sets={**PLAN, "d_model": 64, "d_ff": 256}))
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("lumenlm train: error:") and "No space left" in last, r.stderr
        assert "resume" in last or "start a new run" in last, last
        assert "Traceback" not in r.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("minutes", ["nan", "inf", "-1", "0"])
def test_max_minutes_must_be_a_positive_number(
    dataset: Path, tmp_path: Path, minutes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lumenlm.cli import main

    assert main(train_argv(dataset, tmp_path, extra=["--max-minutes", minutes])) != 0
    assert "--max-minutes must be a positive number" in capsys.readouterr().err


def test_sigterm_stops_cleanly_even_mid_evaluation(dataset: Path, tmp_path: Path) -> None:
    """A signal during an evaluation is honoured at the next step boundary: checkpoint
    saved, exit 143, and the resume command printed."""
    slow_eval = {**PLAN, "eval_interval": 1, "eval_batches": None}
    proc = _start(dataset, tmp_path, 0.0, *train_argv(dataset, tmp_path, sets=slow_eval))
    _wait_for(
        lambda: (r := _first_run(tmp_path)) is not None and (r / "checkpoints" / "last").is_dir(),
        proc,
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 128 + signal.SIGTERM), err
    if proc.returncode:
        assert "resume with: lumenlm train --resume" in err
    run = _first_run(tmp_path)
    assert run is not None
    r = run_cli(resume_argv(run))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("split", ["train", "val"])
def test_out_of_vocabulary_ids_are_refused_before_a_run_starts(
    dataset: Path, tmp_path: Path, split: str
) -> None:
    import numpy as np

    from lumenlm.errors import DataError

    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    meta = json.loads((data / "meta.json").read_text())
    ids = np.memmap(data / f"{split}.bin", dtype=meta["dtype"], mode="r+")
    ids[len(ids) // 2] = meta["vocab_size"]  # one past the last id
    ids.flush()
    del ids
    with pytest.raises(DataError, match="re-run `lumenlm prepare`"):
        _train(data, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
