"""Run status (`lumenlm.train.runs`): what config.json records, what `lumenlm runs` shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from lumenlm.data.windows import WindowDataset
from lumenlm.train.runs import summarize_run
from train_helpers import PYTHON, make_dataset, run_config, train_tiny


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


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
        train_tiny(dataset, tmp_path)
    run = next(tmp_path.iterdir())
    cfg = run_config(run)
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
