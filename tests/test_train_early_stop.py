"""EarlyStopping: the patience rule on its own, and what a resume restores of it."""

from __future__ import annotations

from lumenlm.train.early_stop import EarlyStopping


def test_stops_after_patience_evaluations_without_improvement() -> None:
    es = EarlyStopping(patience=2)
    assert [es.update(v) for v in (3.0, 2.0, 2.5, 2.1)] == [False, False, False, True]
    assert es.best == 2.0 and es.bad == 2 and es.stopped and es.patience_left == 0


def test_an_improvement_resets_the_count() -> None:
    es = EarlyStopping(patience=2)
    for v in (3.0, 3.1, 2.9, 3.0):
        assert not es.update(v)
    assert es.best == 2.9 and es.bad == 1 and es.patience_left == 1


def test_min_delta_decides_what_counts_as_better() -> None:
    es = EarlyStopping(patience=1, min_delta=0.1)
    es.update(1.0)
    assert es.update(0.95)  # better, but not by more than min_delta
    assert es.best == 1.0
    es = EarlyStopping(patience=1, min_delta=0.1)
    es.update(1.0)
    assert not es.update(0.85) and es.best == 0.85


def test_without_patience_it_never_stops() -> None:
    es = EarlyStopping(patience=None)
    assert not any(es.update(1.0) for _ in range(50))
    assert es.patience_left is None and not es.stopped


def test_restored_counters_continue_exactly() -> None:
    """A run resumed with (best, bad) from a checkpoint stops where an uninterrupted one does."""
    values = [5.0, 4.0, 4.2, 4.1, 3.9, 4.0, 4.0, 4.0]
    whole = EarlyStopping(patience=3)
    stops_whole = [whole.update(v) for v in values]
    first = EarlyStopping(patience=3)
    stops = [first.update(v) for v in values[:4]]
    second = EarlyStopping(patience=3, best=first.best, bad=first.bad)
    stops += [second.update(v) for v in values[4:]]
    assert stops == stops_whole and (second.best, second.bad) == (whole.best, whole.bad)


def test_raising_patience_lets_a_stopped_run_go_on() -> None:
    es = EarlyStopping(patience=1, best=1.0, bad=1)
    assert es.stopped
    assert not EarlyStopping(patience=3, best=1.0, bad=1).stopped
