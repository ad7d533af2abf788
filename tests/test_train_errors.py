"""Bad input through `lumenlm.cli.main`: non-zero exit, one-line error, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumenlm.cli import main
from train_helpers import make_dataset, resume_argv, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1500, n_val=300)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.startswith("lumenlm train: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--preset", "nope"], ["unknown preset 'nope'", "tiny"]),
        (["--preset", "tiny", "--set", "learning_rate=1"], ["unknown config key", "lr"]),
        (["--preset", "tiny", "--set", "model.d_modl=64"], ["unknown config key", "model.d_model"]),
        (["--preset", "tiny", "--set", "n_heads=3"], ["n_heads=3 does not divide d_model=32"]),
        (["--preset", "tiny", "--set", "batch_size=0"], ["batch_size"]),
        (
            ["--preset", "tiny", "--set", "context_length=2048"],
            ["train split", "1500 tokens", "context_length=2048"],
        ),
        (
            ["--preset", "tiny", "--set", "batch_size=512"],
            ["93 windows", "one optimizer step needs 512"],
        ),
    ],
)
def test_bad_config(
    data: Path, tmp_path: Path, capsys, extra: list[str], needles: list[str]
) -> None:
    args = train_argv(data, tmp_path / "runs", preset=None, sets={"max_steps": 2})
    code, err = _run([*args, *extra], capsys)
    assert code != 0
    _one_line_error(err, *needles)
    assert not any((tmp_path / "runs").glob("run_*"))  # no half-made run left behind


def test_val_split_too_short(tmp_path: Path, capsys) -> None:
    d = make_dataset(tmp_path / "d", n_train=1500, n_val=10)
    code, err = _run(train_argv(d, tmp_path / "r", sets={"max_steps": 2}), capsys)
    assert code != 0
    _one_line_error(err, "val split", "10 tokens")


@pytest.mark.parametrize("kind", ["missing", "foreign"])
def test_bad_data_dir(tmp_path: Path, capsys, kind: str) -> None:
    d = tmp_path / "data"
    if kind == "foreign":
        d.mkdir()
        (d / "notes.txt").write_text("hello")
    code, err = _run(train_argv(d, tmp_path / "r"), capsys)
    assert code != 0
    _one_line_error(err, str(d))


def test_resume_needs_a_run_dir(tmp_path: Path, capsys) -> None:
    code, err = _run(resume_argv(tmp_path), capsys)
    assert code != 0
    _one_line_error(err, "not a run directory")


def _corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_checkpoint_falls_back_then_says_so(data: Path, tmp_path: Path, capsys) -> None:
    plan = {"max_steps": 6, "checkpoint_interval": 2, "eval_interval": 100, "keep_checkpoints": 5}
    code, _ = _run(train_argv(data, tmp_path, stop_at=4, sets=plan), capsys)
    assert code == 0
    run = next(tmp_path.glob("run_*"))
    ckpts = run / "checkpoints"
    _corrupt(ckpts / "last" / "model.safetensors")
    _corrupt(ckpts / "step_4" / "trainer_state.safetensors")
    if (ckpts / "best").exists():  # best (step 4, from the closing evaluation) is good too
        _corrupt(ckpts / "best" / "config.json")
    code, err = _run(resume_argv(run), capsys)
    assert code == 0, err
    assert "skipping checkpoint last" in err and "resuming from step_2" in err
    assert json.loads((ckpts / "last" / "trainer_state.json").read_text())["step"] == 6
    # nothing good left -> a one-line error
    for name in ("last", "best", "step_2", "step_4", "step_6"):
        if (ckpts / name).exists():
            (ckpts / name / "manifest.json").write_text("{")
    code, err = _run(resume_argv(run), capsys)
    assert code != 0
    _one_line_error(err, "no intact checkpoint")


def test_diverging_lr_stops_and_never_checkpoints_exploded_weights(
    data: Path, tmp_path: Path, capsys
) -> None:
    """lr=1e30 blows the weights up at the first step: that step is never saved as a
    "last good" checkpoint (max |w| would be ~1e30), and the error says what to do."""
    from lumenlm.train.checkpoint import EXPLODED, largest_weight_of

    plan = {
        "max_steps": 20,
        "lr": 1e30,
        "warmup_steps": 0,
        "checkpoint_interval": 1,
        "eval_interval": 100,
    }
    code, err = _run(train_argv(data, tmp_path, sets=plan), capsys)
    assert code != 0
    _one_line_error(err, "at step", "stopped without saving", "--set lr=")
    line = next(x for x in err.splitlines() if x.startswith("lumenlm train: error"))
    assert " is nan" in line or " is inf" in line or "exploded" in line
    run = next(tmp_path.glob("run_*"))
    for ckpt in (run / "checkpoints").iterdir():
        assert largest_weight_of(ckpt) < EXPLODED, ckpt.name
    assert json.loads((run / "config.json").read_text())["status"] == "diverged"
