"""Training metrics (`lumenlm.train.metrics` and what the loop logs): MFU, throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lumenlm.train.trainer import Trainer
from train_helpers import make_dataset, train_tiny


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


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
    run = train_tiny(dataset, tmp_path, max_steps=4, eval_interval=2, log_interval=2)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tps = {r["step"]: r["tokens_per_s"] for r in recs if "tokens_per_s" in r}
    tokens_per_step = 4 * 16
    assert tps[4] > 2 * tokens_per_step / 0.8, tps  # 2 steps well under the 1 s evaluation
