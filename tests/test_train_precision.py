"""The code paths a GPU run takes, checked on CPU: precision, compile, MFU, TensorBoard.

fp16 trains with a GradScaler (skipped steps on overflow, the scale in checkpoints), bf16
needs none, and a compiled model saves plain weight names; each resumes bit-identically.
MFU counts matmul weights against the GPU's data-sheet peak; TensorBoard events stay
free of duplicates across a crash and resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lumenlm.errors import ConfigError
from lumenlm.train import precision as P
from lumenlm.train import train
from train_helpers import assert_same_state, make_dataset, overrides, weights


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def _train(dataset: Path, out: Path, recipe: dict, **kw: object) -> Path:
    return train("tiny", dataset, out, overrides(**recipe), device="cpu", progress_bar=False, **kw)


def test_precision_choices() -> None:
    cpu = torch.device("cpu")
    assert P.resolve_precision("auto", cpu) == "fp32"
    assert P.resolve_precision("fp16", cpu) == "fp16"
    assert P.make_scaler("bf16", cpu) is None and P.make_scaler("fp32", cpu) is None
    scaler = P.make_scaler("fp16", cpu)
    assert scaler is not None and scaler.is_enabled()
    with pytest.raises(ConfigError, match="choose fp32, bf16, fp16 or auto"):
        P.resolve_precision("fp8", cpu)


def test_tf32_setting_is_process_wide_but_restored() -> None:
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    cuda = torch.device("cuda")  # only the flags are touched: no GPU needed
    restore = P.configure_matmul(cuda, tf32=False)
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 is False
    restore()
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    restore = P.configure_matmul(cuda, tf32=True)
    assert torch.get_float32_matmul_precision() == "high"
    restore()
    P.configure_matmul(torch.device("cpu"), tf32=True)()  # CPU: nothing changes
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before


def test_fp16_skips_overflowing_steps_and_resumes_bit_identically(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start the loss scale absurdly high so the first steps overflow in fp16 and are
    # skipped, and let it grow again every 2 good steps: the scaler's whole state
    # machine runs on both sides of the resume point.
    def scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
        assert precision == "fp16"
        return torch.amp.GradScaler(device.type, init_scale=2.0**22, growth_interval=2)

    monkeypatch.setattr("lumenlm.train.trainer.make_scaler", scaler)
    recipe = {"max_steps": 12, "grad_accum": 2, "dropout": 0.1, "checkpoint_interval": 1}
    ref = _train(dataset, tmp_path / "ref", recipe, precision="fp16")
    run = _train(dataset, tmp_path / "run", recipe, precision="fp16", stop_at_step=7)
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, ref)

    steps = [r for r in _records(ref) if "loss" in r]
    scales = [r["loss_scale"] for r in steps]
    skipped = [r["step"] for r in steps if r["grad_norm"] is None]
    assert skipped and skipped[0] == 1, skipped  # overflow: the step is skipped, not fatal
    assert min(scales) < 2.0**22 and scales[-1] > min(scales)  # backed off, then grew
    assert [r["loss_scale"] for r in _records(run) if "loss" in r] == scales
    state = json.loads((ref / "checkpoints/last/trainer_state.json").read_text())
    assert state["precision"] == "fp16" and state["scaler"]["scale"] == scales[-1]
    # the loss fell despite the skipped steps
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_bf16_resume_is_bit_identical(dataset: Path, tmp_path: Path) -> None:
    recipe = {"max_steps": 8, "grad_accum": 2, "dropout": 0.1, "checkpoint_interval": 1}
    ref = _train(dataset, tmp_path / "ref", recipe, precision="bf16")
    run = _train(dataset, tmp_path / "run", recipe, precision="bf16", stop_at_step=3)
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, ref)
    state = json.loads((ref / "checkpoints/last/trainer_state.json").read_text())
    assert state["precision"] == "bf16" and state["scaler"] is None
    assert all(v.dtype == torch.float32 for v in weights(ref).values())  # master weights fp32


def test_compiled_run_saves_plain_names_and_resumes_bit_identically(
    dataset: Path, tmp_path: Path
) -> None:
    from torch._dynamo.utils import counters

    recipe = {"max_steps": 6, "grad_accum": 2, "dropout": 0.1, "checkpoint_interval": 1}
    counters.clear()
    ref = _train(dataset, tmp_path / "ref", {**recipe, "compile": True})
    assert counters["stats"]["calls_captured"] > 0  # Dynamo really traced the model
    run = _train(dataset, tmp_path / "run", {**recipe, "compile": True}, stop_at_step=3)
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, ref)
    assert not any("_orig_mod" in k or "module." in k for k in weights(ref))
    # Without dropout (whose compiled RNG differs from eager's), compiled and eager
    # compute the same function: the losses agree to rounding.
    no_dropout = {**recipe, "dropout": 0.0}
    compiled = _train(dataset, tmp_path / "compiled", {**no_dropout, "compile": True})
    eager = _train(dataset, tmp_path / "eager", no_dropout)
    a = [r["loss"] for r in _records(compiled) if "loss" in r]
    b = [r["loss"] for r in _records(eager) if "loss" in r]
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4


@pytest.mark.parametrize(
    ("gpu", "precision", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", True, 989e12),
        ("NVIDIA H100 PCIe", "bf16", True, 756e12),
        ("NVIDIA H200", "fp16", True, 989e12),
        ("NVIDIA H200", "fp32", True, 989e12 / 2),  # TF32 tensor cores: half rate
        ("NVIDIA H200", "fp32", False, None),  # plain fp32: no estimate without peak_tflops
        ("NVIDIA A100-SXM4-40GB", "bf16", True, 312e12),
        ("NVIDIA A10G", "bf16", True, 70e12),
        ("NVIDIA L4", "bf16", True, 121e12),
        ("NVIDIA L40S", "bf16", True, 362e12),
        ("Tesla V100-SXM2-16GB", "fp16", True, 125e12),
        ("Tesla V100-SXM2-16GB", "fp32", True, None),  # no TF32 before Ampere
        ("NVIDIA GH200 480GB", "bf16", True, 989e12),
        ("Some Future GPU", "bf16", True, None),
    ],
)
def test_peak_flops_from_the_gpu_name(gpu: str, precision: str, tf32: bool, peak: float) -> None:
    from lumenlm.train.metrics import guess_peak_flops

    assert guess_peak_flops("cuda", precision, tf32, name=gpu) == peak
    assert guess_peak_flops("cpu", precision, tf32, name=gpu) is None


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_counts_matmul_weights_only(tied: bool) -> None:
    from lumenlm.model import GPT
    from lumenlm.presets import get_preset
    from lumenlm.train.metrics import flops_per_token, matmul_params

    cfg = get_preset("lumenbase-128m").model.replace(tie_embeddings=tied)
    with torch.device("meta"):
        model = GPT(cfg)
    d, h, kv, dh, ff = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff
    per_layer = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * ff  # q, k+v, o, SwiGLU
    by_hand = cfg.n_layers * per_layer + cfg.vocab_size * d  # + the output head, once
    assert matmul_params(model) == by_hand
    lookup = 0 if tied else cfg.vocab_size * d  # an untied input table costs no FLOPs
    norms = (2 * cfg.n_layers + 1) * d  # RMSNorm gains: left out
    assert model.num_parameters() == by_hand + lookup + norms
    expected = 6 * by_hand + 12 * cfg.n_layers * cfg.context_length * d
    assert flops_per_token(by_hand, cfg.n_layers, cfg.context_length, d) == expected


def test_mfu_is_logged_with_a_given_peak(dataset: Path, tmp_path: Path) -> None:
    from lumenlm.config import ModelConfig
    from lumenlm.model import GPT
    from lumenlm.train.metrics import matmul_params

    run = _train(dataset, tmp_path, {"max_steps": 3, "peak_tflops": 0.001})
    cfg = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    with torch.device("meta"):
        model = GPT(cfg)
    per_token = 6 * matmul_params(model) + 12 * cfg.n_layers * cfg.context_length * cfg.d_model
    mfus = [(r["mfu"], r["tokens_per_s"]) for r in _records(run) if "loss" in r]
    assert len(mfus) == 3
    for mfu, tps in mfus:
        assert mfu == pytest.approx(tps * per_token / 1e9, rel=1e-3)


def test_tensorboard_events_survive_a_crash_and_resume_without_duplicates(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after step 4 with the last checkpoint at step 3: the resumed run redoes
    step 4, and TensorBoard shows each step once (the first attempt's step 4 is purged)."""
    pytest.importorskip("tensorboard")  # in the dev extra; optional for users
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lumenlm.data.windows import WindowDataset

    original, calls = WindowDataset.get_batch, {"n": 0}

    def crashing_batch(self: WindowDataset, indices: object) -> object:
        if len(self.tokens) == 1000:  # train split, one batch per step
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("simulated crash")
        return original(self, indices)

    monkeypatch.setattr(WindowDataset, "get_batch", crashing_batch)
    recipe = {"max_steps": 6, "tensorboard": True, "checkpoint_interval": 3, "eval_interval": 100}
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(dataset, tmp_path, recipe)
    monkeypatch.setattr(WindowDataset, "get_batch", original)
    (run,) = tmp_path.iterdir()

    def tb_loss() -> list:
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        return events.Scalars("loss")

    assert [e.step for e in tb_loss()] == [1, 2, 3, 4]  # flushed although the run crashed
    train(resume=run, device="cpu", progress_bar=False)
    loss = tb_loss()
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    logged = {r["step"]: r["loss"] for r in _records(run) if "loss" in r}
    assert [e.value for e in loss] == [pytest.approx(logged[e.step], rel=1e-6) for e in loss]
