"""The learning-rate schedules, and warmup-stable-decay under a `--max-minutes` budget:
its decay ends when the (simulated) time does, and a resume mid-decay is bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumenlm.config import TrainConfig
from lumenlm.errors import ConfigError
from lumenlm.train import train
from lumenlm.train.schedule import lr_at, plan_decay
from train_helpers import assert_same_state, make_dataset, overrides, run_config

LR, FLOOR = 1e-3, 0.1
# 1000 planned steps: only the 1-minute budget can end this run
WSD = {"max_steps": 1000, "schedule": "wsd", "decay_fraction": 0.25, "lr": LR,
       "min_lr_ratio": FLOOR, "eval_interval": 1000, "checkpoint_interval": 4}  # fmt: skip
SECONDS_PER_STEP = 1.0
BUDGET_MIN = 1.0


class StepClock:
    """Simulated time: each optimizer step takes exactly SECONDS_PER_STEP."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, _trainer: object) -> None:
        self.t += SECONDS_PER_STEP


def test_wsd_in_steps_holds_then_decays_linearly_to_the_floor() -> None:
    kw = {"lr": 1.0, "total_steps": 110, "warmup_steps": 10, "min_lr_ratio": 0.1}
    wsd = dict(kw, schedule="wsd", decay_fraction=0.2)  # decay: the last 20 steps
    assert lr_at(0, **wsd) == pytest.approx(0.1) and lr_at(9, **wsd) == 1.0
    assert all(lr_at(s, **wsd) == 1.0 for s in range(10, 90))
    assert lr_at(99, **wsd) == pytest.approx(0.55)
    assert lr_at(109, **wsd) == pytest.approx(0.1) and lr_at(500, **wsd) == pytest.approx(0.1)
    decays = [lr_at(s, **wsd) for s in range(89, 110)]
    assert decays == sorted(decays, reverse=True)
    # a recorded decay length wins over the fraction
    assert lr_at(104, **dict(wsd, decay_steps=5)) == 1.0
    assert lr_at(105, **dict(wsd, decay_steps=5)) == pytest.approx(1.0 - 0.9 / 5)
    assert lr_at(106, **dict(wsd, decay_steps=5, decay_fraction=0.9)) == lr_at(
        106, **dict(wsd, decay_steps=5)
    )


def test_plan_decay_waits_then_fits_the_time_left() -> None:
    kw = {"limit_s": 100.0, "decay_fraction": 0.2}
    assert plan_decay(79, 10_000, elapsed_s=79.0, steps_done=79, **kw) is None
    total, decay = plan_decay(80, 10_000, elapsed_s=80.0, steps_done=80, **kw)
    assert total == 80 + decay and decay * 1.0 <= 20.0 and decay >= 15
    # twice as slow a step: half the steps; the plan never passes the planned end
    assert plan_decay(40, 10_000, elapsed_s=80.0, steps_done=40, **kw)[1] <= 10
    assert plan_decay(80, 85, elapsed_s=80.0, steps_done=80, **kw) == (85, 5)


def test_decay_fraction_is_checked() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="decay_fraction"):
            TrainConfig(decay_fraction=bad)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


def _budgeted(dataset: Path, out: Path, stop: int | None = None) -> Path:
    clock = StepClock()
    return train(
        "tiny", dataset, out, overrides(**WSD), max_minutes=BUDGET_MIN, stop_at_step=stop,
        device="cpu", progress_bar=False, clock=clock, on_step=clock.tick,
    )  # fmt: skip


def _train_lrs(run: Path) -> dict[int, float]:
    lines = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["lr"] for r in lines if "lr" in r}


@pytest.fixture(scope="module")
def budgeted(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _budgeted(dataset, tmp_path_factory.mktemp("wsd"))


def test_wsd_decay_ends_within_the_budget(budgeted: Path) -> None:
    state = json.loads((budgeted / "checkpoints/last/trainer_state.json").read_text())
    steps, decay = state["step"], state["decay_steps"]
    assert run_config(budgeted)["status"] == "finished"  # the decay ended the run, not time
    assert state["total_steps"] == steps and decay is not None and decay > 0
    # every step took 1 simulated second: the run, decay included, fits the 60 s
    assert steps * SECONDS_PER_STEP <= BUDGET_MIN * 60
    # the decay began once 1 - decay_fraction of the budget was spent, and fills most of
    # what was left
    start = steps - decay
    assert start * SECONDS_PER_STEP >= (1 - WSD["decay_fraction"]) * BUDGET_MIN * 60 - 1
    assert decay * SECONDS_PER_STEP >= 0.8 * WSD["decay_fraction"] * BUDGET_MIN * 60
    lrs = _train_lrs(budgeted)
    assert all(lrs[s] == LR for s in range(4, start + 1))  # stable at the peak
    assert lrs[steps] == pytest.approx(LR * FLOOR)  # the last step trains at the floor
    decaying = [lrs[s] for s in range(start, steps + 1)]
    assert decaying == sorted(decaying, reverse=True)


class SlowingClock(StepClock):
    """Steps take 1 s until the decay is planned, then 3 s: slower than measured."""

    def tick(self, trainer: object) -> None:
        self.t += SECONDS_PER_STEP * (3 if trainer.p.decay_steps is not None else 1)  # type: ignore[attr-defined]


def test_budget_ending_inside_the_decay_finishes_the_run(dataset: Path, tmp_path: Path) -> None:
    clock = SlowingClock()
    run = train(
        "tiny", dataset, tmp_path, overrides(**WSD), max_minutes=BUDGET_MIN, device="cpu",
        progress_bar=False, clock=clock, on_step=clock.tick,
    )  # fmt: skip
    state = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert run_config(run)["status"] == "finished"  # not "paused": the budget was the plan
    assert state["total_steps"] == state["step"] < 1000
    assert state["best_step"] == state["step"]  # the last weights are the run's best/
    assert state["elapsed_s"] <= BUDGET_MIN * 60 + 3


def test_resume_mid_decay_is_bit_identical(dataset: Path, budgeted: Path, tmp_path: Path) -> None:
    state = json.loads((budgeted / "checkpoints/last/trainer_state.json").read_text())
    mid = state["step"] - state["decay_steps"] // 2
    run = _budgeted(dataset, tmp_path, stop=mid)
    paused = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert paused["step"] == mid and paused["decay_steps"] == state["decay_steps"]
    train(resume=run, device="cpu", progress_bar=False)  # no budget: the recorded plan
    assert_same_state(run, budgeted)
    assert _train_lrs(run) == _train_lrs(budgeted)


def test_progress_bar_under_a_budget_counts_the_budget_not_the_schedule() -> None:
    from lumenlm.train.checkpoint import Progress
    from lumenlm.train.console import Console

    p = Progress(step=10, total_steps=5260)
    bar = Console(True, True).progress_bar(p, max_minutes=3)
    try:
        assert bar.total == 180 and bar.unit == "s"  # the ETA is what the 3 minutes leave
        Console.advance(bar, p, 60.7, {"loss": "1.0"})
        assert bar.n == 60 and "10/5260" in bar.postfix
        Console.advance(bar, p, 999.0, {})
        assert bar.n == 180
    finally:
        bar.close()
    plain = Console(True, True).progress_bar(p)
    try:
        assert plain.total == 5260 and plain.n == 10
        Console.advance(plain, p, 1.0, {})
        assert plain.n == 11
    finally:
        plain.close()


def test_card_of_a_paused_run_shows_its_closing_evaluation(budgeted: Path, tmp_path: Path) -> None:
    from lumenlm.train.card import render_card

    run = budgeted
    card = (run / "README.md").read_text()
    assert 'load("PATH")' not in card and str(run.resolve()) in card
    # a paused run: no best chosen, but a closing evaluation was logged
    from lumenlm.config import ModelConfig, TrainConfig

    text = render_card(
        name="r", model=ModelConfig(), train=TrainConfig(), n_params=1, data={},
        progress={"best_val_loss": None, "last_val_loss": 5.92, "last_val_step": 7},
    )  # fmt: skip
    assert "| Last val loss | 5.9200 |" in text and "Best val loss | n/a" not in text
