"""`--precision auto` on a CPU: fp32 without native bf16 (no probe), bf16 only where a
cached probe of the model says it is faster, and bf16's loss against fp32's.

The policy is tested with a faked CPU (`cpu_bf16_native`, `cpu_info`) and a faked probe
result, so it runs the same on every machine; the real probe runs once on a tiny model.
The slow parity test trains the same model on the same batches in fp32 and in bf16
autocast for a few hundred steps and compares the losses (`P.LOSS_TOLERANCE`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lumenlm import devices
from lumenlm.presets import get_preset
from lumenlm.train import precision as P
from lumenlm.train import train
from train_helpers import make_dataset, overrides

CPU = torch.device("cpu")


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend to be a CPU with (or without) native bf16 whose probe gives `speedup`;
    returns the list of probe calls. The probe cache lives in a fresh folder."""
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[int, int]] = []

    def as_cpu(native: bool | None, speedup: float = 1.6) -> list[tuple[int, int]]:
        monkeypatch.setattr(P, "cpu_bf16_native", lambda: native)
        monkeypatch.setattr(P, "cpu_info", lambda: ("Test CPU 9000", frozenset({"amx_bf16"})))

        def probe(cfg, rows: int, steps: int) -> P.ProbeResult:
            calls.append((rows, cfg.context_length))
            return P.ProbeResult(0.2 * speedup, 0.2, rows, cfg.context_length)

        monkeypatch.setattr(P, "measure_bf16_speedup", probe)
        return calls

    return as_cpu


def _cfg(**kw: object):
    cfg = get_preset("tiny").model
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("native", [False, None])
def test_without_native_bf16_auto_is_fp32_with_no_probe_and_no_output(
    fake_cpu, capsys: pytest.CaptureFixture, native: bool | None
) -> None:
    calls = fake_cpu(native)
    assert P.resolve_precision("auto", CPU, _cfg(), 32) == "fp32"
    assert calls == [] and capsys.readouterr().err == ""
    assert not P.probe_cache_path().exists()


def test_this_machine_without_native_bf16_never_probes(monkeypatch, tmp_path: Path) -> None:
    """No fakes: on a CPU without amx_bf16/avx512_bf16 (the AVX2 EPYC) auto is fp32."""
    if devices.cpu_bf16_native() is True:
        pytest.skip("this CPU has native bf16: the faked-CPU tests cover the policy")
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path))

    def no_probe(*args: object) -> P.ProbeResult:
        raise AssertionError("probed on a CPU without native bf16")

    monkeypatch.setattr(P, "measure_bf16_speedup", no_probe)
    assert P.resolve_precision("auto", CPU, _cfg(), 32) == "fp32"


def test_native_and_faster_gives_bf16_with_one_line(fake_cpu, capsys) -> None:
    calls = fake_cpu(True, speedup=1.6)
    assert P.resolve_precision("auto", CPU, _cfg(context_length=64), 40) == "bf16"
    assert calls == [(32, 64)]  # rows capped at PROBE_TOKENS // context
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chose bf16" in err[0] and "1.60x" in err[0]
    assert "probed now" in err[0] and "--precision fp32" in err[0]
    doc = json.loads(P.probe_cache_path().read_text())
    (entry,) = doc["entries"].values()
    assert entry["speedup"] == pytest.approx(1.6) and entry["cpu"] == "Test CPU 9000"


@pytest.mark.parametrize("speedup", [0.5, 1.0, P.BF16_MARGIN - 0.01])
def test_native_but_not_fast_enough_gives_fp32(fake_cpu, capsys, speedup: float) -> None:
    fake_cpu(True, speedup=speedup)
    assert P.resolve_precision("auto", CPU, _cfg(), 8) == "fp32"
    err = capsys.readouterr().err
    assert "chose fp32" in err and f"{speedup:.2f}x" in err and "below the 1.10x" in err


def test_a_cache_hit_does_not_probe_again_and_the_key_follows_the_shape(fake_cpu, capsys) -> None:
    calls = fake_cpu(True, speedup=1.3)
    assert P.resolve_precision("auto", CPU, _cfg(), 8) == "bf16"
    assert P.resolve_precision("auto", CPU, _cfg(), 8) == "bf16"
    assert len(calls) == 1
    assert "cached probe" in capsys.readouterr().err.strip().splitlines()[-1]
    P.resolve_precision("auto", CPU, _cfg(), 4)  # other rows per step
    P.resolve_precision("auto", CPU, _cfg(d_model=128, d_head=32), 8)  # another model
    assert len(calls) == 3
    assert len(json.loads(P.probe_cache_path().read_text())["entries"]) == 3


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffnot json", b'["a list"]', b'{"version": 1, "entries": {"KEY": {"fp32_s": "x"}}}'],
    ids=["garbage", "not-ours", "bad-entry"],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(fake_cpu, content: bytes) -> None:
    calls = fake_cpu(True, speedup=2.0)
    key = P.probe_key(_cfg(), 8, _cfg().context_length)
    path = P.probe_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content.replace(b"KEY", key.encode()))
    assert P.resolve_precision("auto", CPU, _cfg(), 8) == "bf16"
    assert len(calls) == 1
    doc = json.loads(path.read_text())
    assert doc["version"] == P.CACHE_VERSION and doc["entries"][key]["fp32_s"] > 0
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_an_unwritable_cache_still_chooses(fake_cpu, tmp_path: Path, monkeypatch) -> None:
    calls = fake_cpu(True, speedup=2.0)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "file" / "below"))  # not a folder
    assert P.resolve_precision("auto", CPU, _cfg(), 8) == "bf16"
    assert len(calls) == 1


def test_no_model_or_several_processes_keep_fp32(fake_cpu) -> None:
    calls = fake_cpu(True, speedup=3.0)
    assert P.resolve_precision("auto", CPU) == "fp32"  # nothing to probe
    assert P.resolve_precision("auto", CPU, _cfg(), 8, world_size=2) == "fp32"
    assert P.resolve_precision("fp32", CPU, _cfg(), 8) == "fp32"  # explicit: no probe
    assert calls == []


def test_the_real_probe_times_both_precisions_and_keeps_the_rng() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    result = P.measure_bf16_speedup(_cfg(context_length=16, d_model=32, d_ff=64), 2, steps=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert result.fp32_s > 0 and result.bf16_s > 0 and math.isfinite(result.speedup)
    assert (result.rows, result.context) == (2, 16)


def test_a_training_run_uses_the_auto_choice(fake_cpu, tmp_path: Path) -> None:
    fake_cpu(True, speedup=1.5)
    data = make_dataset(tmp_path / "data", n_train=300, n_val=100)
    run = train(
        "tiny", data, tmp_path / "runs", overrides(max_steps=2), device="cpu", progress_bar=False
    )
    state = json.loads((run / "checkpoints/last/trainer_state.json").read_text())
    assert state["precision"] == "bf16"


# -- bf16's loss against fp32's ---------------------------------------------------------------

PARITY = [
    # (label, overrides, steps, needs native bf16): the tiny model is cheap enough to train
    # in emulated bf16 (its rounding is bf16's either way); the librarian shape is not
    ("tiny", {}, 300, False),
    (
        "librarian-shape",
        {"d_model": 128, "n_heads": 4, "n_kv_heads": 4, "d_ff": 256, "context_length": 64},
        300,
        True,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, steps, native_only", [c[1:] for c in PARITY], ids=[c[0] for c in PARITY]
)
def test_bf16_autocast_loss_matches_fp32_over_a_few_hundred_steps(
    tmp_path: Path, extra: dict, steps: int, native_only: bool
) -> None:
    if native_only and devices.cpu_bf16_native() is not True:
        pytest.skip(
            "bf16 is emulated on this CPU (no amx_bf16/avx512_bf16): 300 bf16 steps of this "
            "shape take minutes (394 s vs 84 s in fp32 on a 2-core EPYC); run where bf16 is native"
        )
    data = make_dataset(tmp_path / "data", n_train=6000, n_val=600)
    recipe = overrides(
        max_steps=steps, eval_interval=steps, eval_batches=8, checkpoint_interval=steps, **extra
    )
    losses = {}
    for precision in ("fp32", "bf16"):
        run = train(
            "tiny",
            data,
            tmp_path / precision,
            recipe,
            device="cpu",
            precision=precision,
            progress_bar=False,
        )
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        train_losses = [r["loss"] for r in rows if "loss" in r]
        val = [r["val_loss"] for r in rows if "val_loss" in r]
        losses[precision] = (sum(train_losses[-20:]) / 20, val[-1], train_losses[0])
    (fp32_train, fp32_val, first), (bf16_train, bf16_val, _) = losses["fp32"], losses["bf16"]
    assert fp32_train < 0.8 * first, "the model must learn for the comparison to mean something"
    assert bf16_val == pytest.approx(fp32_val, rel=P.LOSS_TOLERANCE), losses
    assert bf16_train == pytest.approx(fp32_train, rel=P.LOSS_TOLERANCE), losses
