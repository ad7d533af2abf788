"""torchrun on CPU (gloo): DDP and FSDP2 match a single process with the same global batch.

A 2-rank run with per-rank batch b sees exactly the windows a 1-process run with batch 2b
sees (the sampler splits each global micro-batch across ranks), so losses agree to
float rounding; checkpoints hold full tensors and resume at any world size.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from train_helpers import (
    LUMENLM,
    PYTHON,
    REPO,
    make_dataset,
    only_run,
    resume_argv,
    train_argv,
)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

STEPS = 6
RECIPE = {"max_steps": STEPS, "grad_accum": 2, "eval_interval": 3, "checkpoint_interval": 3}
TOL = 1e-5


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    script = str(Path(PYTHON).parent / "lumenlm")
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        script,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO)


def _single(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LUMENLM, *args], capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO
    )


def _losses(run: Path, key: str = "loss") -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return [r[key] for r in recs if r.get(key) is not None]


def _train_args(
    data: Path, out: Path, batch: int, *extra: str, stop_at: int | None = None
) -> list[str]:
    sets = {**RECIPE, "batch_size": batch}
    return train_argv(data, out, stop_at=stop_at, sets=sets, extra=extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=3000, n_val=300)


@pytest.fixture(scope="module")
def single(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    r = _single(_train_args(data, out, 4))
    assert r.returncode == 0, r.stderr
    return only_run(out)


def _close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and a, (a, b)
    assert max(abs(x - y) for x, y in zip(a, b)) < TOL, (a, b)


def test_ddp_two_ranks_match_single_process_double_batch(
    data: Path, single: Path, tmp_path: Path
) -> None:
    r = _torchrun(_train_args(data, tmp_path, 2))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path)
    assert len(_losses(run)) == STEPS
    _close(_losses(run), _losses(single))
    _close(_losses(run, "val_loss"), _losses(single, "val_loss"))
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


@pytest.mark.slow  # about 20 s; the DDP test keeps two-rank parity in the default suite
def test_fsdp2_two_ranks_match_single_process(data: Path, single: Path, tmp_path: Path) -> None:
    r = _torchrun(_train_args(data, tmp_path, 2, "--strategy", "fsdp"))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path)
    _close(_losses(run), _losses(single))
    _close(_losses(run, "val_loss"), _losses(single, "val_loss"))


@pytest.mark.slow
def test_fsdp2_two_ranks_match_and_resume_on_two_ranks(
    data: Path, single: Path, tmp_path: Path
) -> None:
    r = _torchrun(_train_args(data, tmp_path, 2, "--strategy", "fsdp", stop_at=3))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path)
    r = _torchrun(resume_argv(run))
    assert r.returncode == 0, r.stderr[-3000:]
    _close(_losses(run), _losses(single))
    # the FSDP checkpoint is a plain, complete model dir
    from lumenlm.modelio import load

    model = load(run / "checkpoints" / "best")
    assert model.num_parameters() > 0


def test_two_rank_checkpoint_resumes_in_one_process(
    data: Path, single: Path, tmp_path: Path
) -> None:
    r = _torchrun(_train_args(data, tmp_path, 2, stop_at=3))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path)
    # one process with twice the per-rank batch continues the same global batch order
    r = _single(resume_argv(run, extra=["--set", "batch_size=4"]))
    assert r.returncode == 0, r.stderr
    _close(_losses(run), _losses(single))
    from safetensors.torch import load_file

    wa = load_file(str(run / "checkpoints/last/model.safetensors"))
    wb = load_file(str(single / "checkpoints/last/model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_two_ranks_match_single_eager_process(
    data: Path, single: Path, tmp_path: Path, strategy: str
) -> None:
    """--compile wraps after DDP/FSDP2 (as on a GPU); compiled and eager agree to rounding."""
    r = _torchrun(_train_args(data, tmp_path, 2, "--strategy", strategy, "--compile"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(fp32, compiled, 2 process(es), {strategy})" in r.stderr
    run = only_run(tmp_path)
    _close(_losses(run), _losses(single))
    _close(_losses(run, "val_loss"), _losses(single, "val_loss"))


@pytest.mark.slow  # three CPU runs (torchrun twice), about a minute
def test_muon_on_two_ddp_ranks_matches_one_process_and_resumes(data: Path, tmp_path: Path) -> None:
    muon = ("--set", "optimizer=muon")
    one = tmp_path / "one"
    r = _single(_train_args(data, one, 4, *muon))
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    r = _torchrun(_train_args(data, two, 2, *muon, stop_at=3))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(two)
    r = _torchrun(resume_argv(run))  # Muon's momentum buffers come back on both ranks
    assert r.returncode == 0, r.stderr[-3000:]
    _close(_losses(run), _losses(only_run(one)))
