"""`lumenlm train`'s invocation bound (--stop-at-step, the deprecated --max-steps),
the step callback, what it prints, and the run record as the single writer of config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumenlm.cli import main
from lumenlm.errors import ConfigError
from lumenlm.train.runs import RunRecord
from train_helpers import SHORT_PLAN, make_dataset, run_config, train_argv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def _argv(data: Path, out: Path, *flags: str) -> list[str]:
    # the flags under test are spelled out, so not train_argv's stop_at
    return train_argv(data, out, sets=SHORT_PLAN, extra=flags)


def test_stop_at_step_pauses_without_changing_the_plan(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(dataset, tmp_path, "--stop-at-step", "3")) == 0
    run = Path(capsys.readouterr().out.strip())
    cfg = run_config(run)
    assert (cfg["status"], cfg["step"], cfg["total_steps"]) == ("paused", 3, 12)
    assert cfg["train"]["max_steps"] == 12


def test_old_max_steps_flag_still_works_with_a_notice(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(dataset, tmp_path, "--max-steps", "2")) == 0
    out, err = capsys.readouterr()
    assert "--max-steps is deprecated; use --stop-at-step" in err
    cfg = run_config(Path(out.strip()))
    assert (cfg["status"], cfg["step"], cfg["total_steps"]) == ("paused", 2, 12)


def test_stop_at_step_must_be_positive(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(dataset, tmp_path, "--stop-at-step", "0")) != 0
    assert "--stop-at-step must be positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no run was started


def test_help_lists_every_set_key_with_its_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from lumenlm.config import ModelConfig, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--stop-at-step" in text
    for cls in (ModelConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f"  {f.name} " in text, f.name


def test_on_step_runs_after_every_step(dataset: Path, tmp_path: Path) -> None:
    seen: list[int] = []

    def on_step(trainer) -> None:  # type: ignore[no-untyped-def]
        seen.append(trainer.p.step)

    from lumenlm.train import train
    from train_helpers import overrides

    train(
        "tiny", dataset, tmp_path, overrides(**SHORT_PLAN), stop_at_step=5, device="cpu",
        progress_bar=False, on_step=on_step,
    )  # fmt: skip
    assert seen == [1, 2, 3, 4, 5]


def test_python_api_keeps_the_old_max_steps_keyword(dataset: Path, tmp_path: Path) -> None:
    from lumenlm.train import train
    from train_helpers import overrides

    with pytest.warns(DeprecationWarning, match="stop_at_step"):
        run = train(
            "tiny", dataset, tmp_path, overrides(**SHORT_PLAN), max_steps=2, device="cpu",
            progress_bar=False,
        )  # fmt: skip
    cfg = run_config(run)
    assert (cfg["step"], cfg["total_steps"]) == (2, 12)


def test_run_record_writes_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"status": "running", "error": "x"}))
    record = RunRecord.read(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # an outside edit is not merged back
    record.update(status="paused", step=3, drop=("error",))
    assert json.loads((tmp_path / "config.json").read_text()) == {"status": "paused", "step": 3}
    silent = RunRecord(tmp_path / "elsewhere", {}, write=False)
    silent.update(status="x")  # another rank under torchrun: writes nothing
    assert not (tmp_path / "elsewhere").exists()


def test_run_record_of_a_missing_or_corrupt_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        RunRecord.read(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt run config"):
        RunRecord.read(tmp_path)


def test_config_json_has_one_writer() -> None:
    """Only train/runs.py writes a run's config.json (RunRecord); the rest go through it."""
    src = Path(__file__).resolve().parents[1] / "src" / "lumenlm" / "train"
    for path in src.glob("*.py"):
        text = path.read_text()
        if path.name != "runs.py":
            assert "/ CONFIG" not in text and 'run_dir / "config.json"' not in text, path.name


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank0_prints_run_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str, printed: bool
) -> None:
    import lumenlm.train.api as api

    monkeypatch.setattr(api, "train", lambda **kw: Path("runs/run_x"))
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "--preset", "tiny"]) == 0
    assert ("run_x" in capsys.readouterr().out) is printed
