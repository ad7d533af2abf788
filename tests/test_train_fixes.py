"""Regression tests for reviewed training defects (resume rules, checkpoints, run status)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
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
from lumenlm.train.trainer import Trainer
from test_train_helpers import PYTHON, make_dataset, overrides, weights


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


RECIPE = {"max_steps": 12, "checkpoint_interval": 2, "eval_interval": 1000}


def _train(dataset: Path, out: Path, **kw: object) -> Path:
    stop = kw.pop("stop", None)
    return train(
        "tiny",
        dataset,
        out,
        overrides(**{**RECIPE, **kw}),
        max_steps=stop,  # type: ignore[arg-type]
        device="cpu",
        progress_bar=False,
    )


def _resume(run: Path, **over: object) -> Path:
    return train(resume=run, overrides=over or None, device="cpu", progress_bar=False)


@pytest.fixture(scope="module")
def paused(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 12 planned steps paused at step 3 (step_2 and last at 3)."""
    return _train(dataset, tmp_path_factory.mktemp("paused"), stop=3)


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(dataset, tmp_path_factory.mktemp("ref"))


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def _cfg(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# -- 1: --set on --resume ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["lr", "weight_decay", "train.seed", "batch_size", "model.d_ff"])
def test_resume_refuses_overrides_that_break_exact_resume(
    paused: Path, tmp_path: Path, key: str
) -> None:
    run = _copy(paused, tmp_path)
    with pytest.raises(ConfigError) as err:
        _resume(run, **{key: 3})
    msg = str(err.value)
    assert msg == (
        f"cannot change {key} when resuming (it would break exact resume); start a new run"
    )


def test_resume_of_a_run_saved_by_an_earlier_version(
    paused: Path, reference: Path, tmp_path: Path
) -> None:
    """Run configs from before `tf32` existed, with the retired `num_workers`, resume."""
    run = _copy(paused, tmp_path)
    doc = _cfg(run)
    doc["train"]["num_workers"] = 0
    del doc["train"]["tf32"]
    (run / "config.json").write_text(json.dumps(doc))
    _resume(run)
    _same_weights(run, reference)


def test_resume_allows_restating_the_same_value(paused: Path, tmp_path: Path) -> None:
    run = _copy(paused, tmp_path)
    lr = _cfg(run)["train"]["lr"]
    _resume(run, lr=lr, max_steps=4)  # lr unchanged: fine
    assert _state(run / "checkpoints/last")["step"] == 4


def test_resume_max_steps_replans_and_is_recorded(
    paused: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(paused, tmp_path)
    _resume(run, max_steps=5, log_interval=2)
    assert "re-planned" in capsys.readouterr().err
    assert _state(run / "checkpoints/last")["step"] == 5
    cfg = _cfg(run)
    assert cfg["train"]["max_steps"] == 5 and cfg["train"]["log_interval"] == 2
    assert cfg["total_steps"] == 5
    # a later resume sees the recorded change: nothing left to do
    _resume(run, max_steps=6)
    assert _state(run / "checkpoints/last")["step"] == 6
    assert _cfg(run)["train"]["max_steps"] == 6


def test_sampler_refuses_another_seed() -> None:
    a = data_mod.StepSampler(100, 1, 4, 1)
    a.advance()
    b = data_mod.StepSampler(100, 2, 4, 1)
    with pytest.raises(ConfigError, match="seed 1, not 2"):
        b.load_state_dict(a.state_dict())


# -- 2: perplexity overflow --------------------------------------------------------------


def test_card_survives_a_huge_val_loss(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    t = Trainer(
        *_configs(),
        dataset,
        tmp_path / "run",
        progress_bar=False,
    )
    t.p.best_val_loss = 5000.0
    assert "Best val perplexity" in t._card(curve=None)


def _configs():  # type: ignore[no-untyped-def]
    from lumenlm.train.resolve import resolve_config

    _, m, t = resolve_config("tiny", None, overrides(**RECIPE))
    return m.replace(vocab_size=300), t


# -- 3: data changed under a run ---------------------------------------------------------


def test_resume_refuses_changed_data(dataset: Path, paused: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    run = _copy(paused, tmp_path)
    cfg = _cfg(run)
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


# -- 4: crash in the middle of replacing `last` --------------------------------------------


def test_resume_after_crash_between_renames(paused: Path, reference: Path, tmp_path: Path) -> None:
    run = _copy(paused, tmp_path)
    root = run / "checkpoints"
    # the crash: old `last` (here step 2) moved aside, the new one (step 3) complete in tmp
    os.replace(root / "last", root / ".last.tmp.k3j2x9ab")
    os.replace(root / "step_2", root / ".last.old.99999")
    shutil.rmtree(root / "best", ignore_errors=True)  # only the leftovers remain
    _resume(run)
    _same_weights(run, reference)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# -- 5: a pause does not move best/ ------------------------------------------------------


def test_pause_and_resume_picks_the_same_best(dataset: Path, tmp_path: Path) -> None:
    # min_delta so large that only the first tracked evaluation can become best
    kw = {"eval_interval": 10, "early_stopping_min_delta": 10.0}
    ref = _train(dataset, tmp_path / "a", **kw)
    run = _train(dataset, tmp_path / "b", stop=7, **kw)
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


# -- 6: throughput ---------------------------------------------------------------------


def test_mfu_is_per_device() -> None:
    from lumenlm.train.metrics import model_flops_utilization

    assert model_flops_utilization(1000.0, 6.0, 1e4, world_size=2) == pytest.approx(0.3)
    assert model_flops_utilization(1000.0, 6.0, None, world_size=2) is None


def test_tokens_per_s_excludes_evaluation(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer.evaluate

    def slow_eval(self: Trainer) -> float:
        time.sleep(1.0)
        return original(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_eval)
    run = _train(dataset, tmp_path, max_steps=4, eval_interval=2, log_interval=2)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tps = {r["step"]: r["tokens_per_s"] for r in recs if "tokens_per_s" in r}
    tokens_per_step = 4 * 16
    assert tps[4] > 2 * tokens_per_step / 0.8, tps  # 2 steps well under the 1 s evaluation


# -- 7: resuming an early-stopped run ----------------------------------------------------


def test_resume_of_early_stopped_run_does_not_train(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(
        dataset,
        tmp_path,
        max_steps=20,
        eval_interval=2,
        early_stopping_patience=1,
        early_stopping_min_delta=10.0,
    )
    assert _cfg(run)["status"] == "early_stopped"
    assert _state(run / "checkpoints/last")["step"] == 4
    capsys.readouterr()
    _resume(run)
    assert "already stopped early" in capsys.readouterr().err
    assert _state(run / "checkpoints/last")["step"] == 4
    assert _cfg(run)["status"] == "early_stopped"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


# -- 8: crashed runs ---------------------------------------------------------------------


def test_crash_is_recorded(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = WindowDataset.get_batch

    def crashing_batch(self, indices):  # type: ignore[no-untyped-def]
        if len(self.tokens) == 1000:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash")
        return original(self, indices)

    monkeypatch.setattr(WindowDataset, "get_batch", crashing_batch)
    with pytest.raises(RuntimeError):
        _train(dataset, tmp_path)
    run = next(tmp_path.iterdir())
    cfg = _cfg(run)
    assert cfg["status"] == "crashed" and cfg["error"] == "simulated crash"
    assert cfg["pid"] == os.getpid() and cfg["host"] == socket.gethostname()


def test_running_run_with_dead_pid_shows_stopped(tmp_path: Path) -> None:
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    for name, pid, host, want in [
        ("a", dead.pid, socket.gethostname(), "stopped?"),
        ("b", os.getpid(), socket.gethostname(), "running"),
        ("c", dead.pid, "some-other-host", "running"),
    ]:
        (tmp_path / name).mkdir()
        doc = {"status": "running", "pid": pid, "host": host}
        (tmp_path / name / "config.json").write_text(json.dumps(doc))
        assert summarize_run(tmp_path / name)["status"] == want


# -- 9: explicit d_head survives a shape override ------------------------------------------


def test_explicit_d_head_is_kept(tmp_path: Path) -> None:
    from lumenlm.train.resolve import resolve_config

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "tiny", "model": {"d_head": 8}}))
    _, m, _ = resolve_config(None, f, {"d_model": 128})
    assert m.d_model == 128 and m.d_head == 8
    _, m, _ = resolve_config("tiny", None, {"d_model": 128})
    assert m.d_head == 32  # derived: follows the new width


# -- 10: only rank 0 prints the run dir ----------------------------------------------------


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank0_prints_run_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str, printed: bool
) -> None:
    import lumenlm.train.api as api
    from lumenlm.cli import main

    monkeypatch.setattr(api, "train", lambda **kw: Path("runs/run_x"))
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "--preset", "tiny"]) == 0
    assert ("run_x" in capsys.readouterr().out) is printed


def test_ppl_clamp() -> None:
    from lumenlm.train.trainer import _ppl

    assert _ppl(1e6) == math.exp(700.0)
