"""Stop reasons: named values, their run status, their precedence, and the time budget."""

from __future__ import annotations

import time

import pytest

from lumenlm.train.stop import StopReason, TimeBudget


def _reason(**hits: bool) -> StopReason | None:
    flags = dict.fromkeys(("early_stopped", "done", "signalled", "step_limit", "time_limit"), False)
    return StopReason.first(**{**flags, **hits})


def test_no_reason_means_train_on() -> None:
    assert _reason() is None


def test_precedence_matches_the_ranks_agreement() -> None:
    """Ranks agree on the largest value, so precedence within a rank must agree with it
    wherever two reasons can hold at once on one rank and differ across ranks."""
    assert _reason(done=True, step_limit=True, time_limit=True) is StopReason.FINISHED
    assert _reason(signalled=True, step_limit=True) is StopReason.SIGNAL
    assert _reason(step_limit=True, time_limit=True) is StopReason.STEP_LIMIT
    assert _reason(early_stopped=True, done=True) is StopReason.EARLY_STOPPED
    # a signal on one rank outranks a time limit on another
    assert max(StopReason.SIGNAL, StopReason.TIME_LIMIT) is StopReason.SIGNAL


@pytest.mark.parametrize(
    ("reason", "status", "paused"),
    [
        (StopReason.FINISHED, "finished", False),
        (StopReason.STEP_LIMIT, "paused", True),
        (StopReason.TIME_LIMIT, "paused", True),
        (StopReason.SIGNAL, "interrupted", False),
        (StopReason.EARLY_STOPPED, "early_stopped", False),
    ],
)
def test_status_recorded_for_each_reason(reason: StopReason, status: str, paused: bool) -> None:
    assert reason.status == status and reason.paused is paused
    assert StopReason(int(reason)) is reason  # survives the ranks' integer reduction
    assert reason.description


def test_time_budget_reserves_the_closing_evaluation() -> None:
    budget = TimeBudget(max_minutes=1.0)
    assert not budget.used_up(micro_batches_per_step=1, eval_batches=10)
    budget.step_done(3.0)  # one step of 3 s: an eval batch costs about 1 s
    budget.start = time.time() - 45.0
    assert not budget.used_up(1, eval_batches=10)  # 45 + 10 < 60
    assert budget.used_up(1, eval_batches=20)  # 45 + 20 >= 60
    assert not budget.used_up(1, eval_batches=0)  # the last step was already evaluated


def test_no_time_limit_is_never_used_up() -> None:
    budget = TimeBudget(None)
    budget.start = 0.0
    assert not budget.used_up(1, 1000)


def test_the_public_names_resolve() -> None:
    import lumenlm.train as t

    for name in t.__all__:
        assert getattr(t, name) is not None, name
    assert issubclass(t.TrainingInterrupted, t.TrainingError.__mro__[1])
