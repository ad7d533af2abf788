"""`lumenlm.blas`: numpy's BLAS against torch's, the measured choice and its switch.

The products must agree to float rounding (relative 1e-5 of the largest entry, fp32;
1e-12 in fp64) on every layout decoding uses: one and several rows, a transposed weight
view, a column slice. The choice is tested with a fake clock (no timed assertion): a
numpy at least `MARGIN` times faster is chosen, a slower or a wrong one never is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_info

from lumenlm import blas
from lumenlm.errors import ConfigError

SMALL = [torch.randn(64, 96), torch.randn(96, 64)]
"""Weights for the probe tests with a fake clock: their timings are scripted."""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(blas.ENV, raising=False)
    threads = torch.get_num_threads()
    blas.reset()
    yield
    blas.reset()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("rows", [1, 8, 33])
@pytest.mark.parametrize("layout", ["in-out", "transposed view", "column slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_product_equals_torch(rows: int, layout: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, 96, generator=g, dtype=dtype)
    if layout == "in-out":
        b = torch.randn(96, 200, generator=g, dtype=dtype)
    elif layout == "transposed view":  # an (out, in) nn.Linear weight, read as (in, out)
        b = torch.randn(200, 96, generator=g, dtype=dtype).t()
    else:
        b = torch.randn(96, 300, generator=g, dtype=dtype)[:, 50:250]
    got, want = blas.numpy_mm(a, b), torch.mm(a, b)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((got - want).abs().max() / want.abs().max()) < tol


def test_env_switch_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "probe", lambda *a, **k: pytest.fail("probed"))
    for value in ("torch", "numpy", " NumPy "):
        monkeypatch.setenv(blas.ENV, value)
        blas.reset()
        assert blas.choice() == value.strip().lower()


def test_bad_env_value_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(blas.ENV, "mkl")
    with pytest.raises(ConfigError, match="auto, torch, numpy"):
        blas.choice()


def _fake_clock(monkeypatch: pytest.MonkeyPatch, torch_s: float, numpy_s: float) -> None:
    """Each timed round of torch.mm takes torch_s, of numpy_mm numpy_s (they alternate)."""
    _scripted_clock(monkeypatch, itertools.cycle([torch_s, numpy_s]))


def _scripted_clock(monkeypatch: pytest.MonkeyPatch, durations: Iterator[float]) -> None:
    """The probe's timed calls take the next of `durations` each (torch, numpy, ...)."""
    ticks = itertools.count()
    now = [0.0]

    def clock() -> float:
        if next(ticks) % 2:  # the end of a round: advance by that round's duration
            now[0] += next(durations)
        return now[0]

    monkeypatch.setattr(blas, "_timer", clock)


@pytest.mark.parametrize(
    ("torch_s", "numpy_s", "want"),
    [(2.0, 1.0, "numpy"), (1.25, 1.0, "numpy"), (1.1, 1.0, "torch"), (1.0, 2.0, "torch")],
)
def test_probe_picks_numpy_only_when_clearly_faster(
    monkeypatch: pytest.MonkeyPatch, torch_s: float, numpy_s: float, want: str
) -> None:
    _fake_clock(monkeypatch, torch_s, numpy_s)
    choice, ratio = blas.probe(weights=SMALL)
    assert choice == want
    assert ratio == pytest.approx(torch_s / numpy_s)
    blas.reset()
    assert blas.choice(SMALL) == want  # auto runs the same probe


def test_probe_refuses_a_wrong_product(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, 10.0, 1.0)  # "much faster", but wrong
    monkeypatch.setattr(blas, "numpy_mm", lambda a, b: torch.mm(a, b) * 1.001)
    assert blas.probe(weights=SMALL)[0] == "torch"


def test_the_probe_streams_its_weights_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twice the last-level cache, never under PROBE_MIN_BYTES: a model's weights from
    the first until there are that many bytes (all of a smaller model), or random ones."""
    monkeypatch.setattr(blas.cpuinfo, "last_level_cache_bytes", lambda: 48 << 20)
    assert blas.probe_bytes() == 96 << 20
    monkeypatch.setattr(blas.cpuinfo, "last_level_cache_bytes", lambda: 0)
    assert blas.probe_bytes() == blas.PROBE_MIN_BYTES
    gen = torch.Generator().manual_seed(0)
    model = [torch.zeros(1024, 1024 * k) for k in (4, 4, 4, 4, 4, 4)]  # 16 MiB each
    assert blas._probe_weights(model, gen) == model[:4]
    assert len(blas._probe_weights(model[:2], gen)) == 2
    made = blas._probe_weights(None, gen)
    assert sum(w.numel() * 4 for w in made) >= blas.PROBE_MIN_BYTES
    assert all(w.dtype == torch.float32 and w.std() > 0.5 for w in made)


def test_last_level_cache_is_read_from_sysfs(tmp_path) -> None:
    from lumenlm import cpuinfo

    for i, (kind, size) in enumerate(
        [("Data", "48K"), ("Unified", "1024K"), ("Unified", "32768K")]
    ):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "type").write_text(kind + "\n")
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    assert cpuinfo.last_level_cache_bytes(str(tmp_path)) == 32 << 20
    assert cpuinfo.last_level_cache_bytes(str(tmp_path / "none")) == 0


def test_decode_mm_auto_only_for_large_cpu_float_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("numpy", 2.0))
    big, small = blas.STREAM_BYTES, blas.STREAM_BYTES - 1
    w = torch.zeros(2, 2)
    assert blas.decode_mm([w], big) is blas.numpy_mm
    assert blas.decode_mm([w], small) is torch.mm
    assert blas.decode_mm([w.bfloat16()], big) is torch.mm  # numpy has no bf16
    assert blas.decode_mm([torch.zeros(2, 2, device="meta")], big) is torch.mm
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("torch", 1.0))
    blas.reset()
    assert blas.decode_mm([w], big) is torch.mm


def test_decode_mm_env_forces_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "probe", lambda *a, **k: pytest.fail("probed"))
    w = torch.zeros(2, 2)
    monkeypatch.setenv(blas.ENV, "numpy")
    assert blas.decode_mm([w], 0) is blas.numpy_mm  # at any size
    assert blas.decode_mm([w.bfloat16()], 0) is torch.mm
    monkeypatch.setenv(blas.ENV, "torch")
    blas.reset()
    assert blas.decode_mm([w], blas.STREAM_BYTES) is torch.mm


def test_decode_choice_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("numpy", 2.0))
    w = torch.zeros(2, 2)
    assert blas.decode_choice([w], blas.STREAM_BYTES) == (
        blas.numpy_mm,
        "numpy's (OpenBLAS), chosen by the probe",
    )
    assert blas.decode_choice([w], 0)[1] == "torch's (model below blas.STREAM_BYTES)"
    monkeypatch.setenv(blas.ENV, "numpy")
    assert blas.decode_choice([w], 0)[1] == "numpy's (OpenBLAS), forced by LUMENLM_BLAS=numpy"
    monkeypatch.setenv(blas.ENV, "torch")
    assert blas.decode_choice([w], blas.STREAM_BYTES) == (
        torch.mm,
        "torch's, forced by LUMENLM_BLAS=torch",
    )
    monkeypatch.delenv(blas.ENV)
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("torch", 1.0))
    blas.reset()
    assert blas.decode_choice([w], blas.STREAM_BYTES)[1] == "torch's, chosen by the probe"


def _openblas_threads() -> set[int]:
    return {d["num_threads"] for d in threadpool_info() if d["internal_api"] == "openblas"}


def test_numpy_threads_hand_torchs_threads_to_blas_and_restore() -> None:
    if not _openblas_threads():
        pytest.skip("numpy here is not built on OpenBLAS; threadpoolctl sees no pool to set")
    torch.set_num_threads(2)
    with blas.numpy_threads():
        assert torch.get_num_threads() == 1
        assert _openblas_threads() == {2}
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), blas.numpy_threads():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored on an error too


def test_probe_is_not_swayed_by_a_slow_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy twice as fast, but a slow spell hits most of its rounds: each side's best
    round still decides."""
    # per round: torch, numpy; the warm-up pair first, then PROBE_ROUNDS pairs
    spell = [1.0, 0.5] + [1.0, 6.0] * 4 + [1.0, 0.5] * (blas.PROBE_ROUNDS - 4)
    _scripted_clock(monkeypatch, iter(spell))
    choice, ratio = blas.probe(weights=SMALL)
    assert (choice, ratio) == ("numpy", pytest.approx(2.0))
