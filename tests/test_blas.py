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

REAL_UNAVAILABLE = blas.packed.unavailable
"""The packed kernel's own answer (the autouse fixture replaces it)."""
SMALL = [torch.randn(64, 96), torch.randn(96, 64)]
"""Weights for the probe tests with a fake clock: their timings are scripted."""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(blas.ENV, raising=False)
    # the probe's two-way tests: torch's against numpy's (the packed kernel's below)
    monkeypatch.setattr(blas.packed, "unavailable", lambda: "off in this test")
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


def _fake_clock(monkeypatch: pytest.MonkeyPatch, **seconds: float) -> None:
    """Every timed pass of a side takes `seconds[side]` (torch=..., numpy=..., packed=...)."""
    _scripted_clock(monkeypatch, {k: itertools.repeat(v) for k, v in seconds.items()})


def _scripted_clock(monkeypatch: pytest.MonkeyPatch, durations: dict[str, Iterator[float]]) -> None:
    """Each timed pass of a side (warm-ups included) takes the next of its `durations`."""
    monkeypatch.setattr(blas, "_timed", lambda name, fn, mats, inputs: next(durations[name]))


@pytest.mark.parametrize(
    ("torch_s", "numpy_s", "want"),
    [(2.0, 1.0, "numpy"), (1.25, 1.0, "numpy"), (1.1, 1.0, "torch"), (1.0, 2.0, "torch")],
)
def test_probe_picks_numpy_only_when_clearly_faster(
    monkeypatch: pytest.MonkeyPatch, torch_s: float, numpy_s: float, want: str
) -> None:
    _fake_clock(monkeypatch, torch=torch_s, numpy=numpy_s)
    choice, ratio = blas.probe(weights=SMALL)
    assert choice == want
    assert ratio == pytest.approx(torch_s / numpy_s)
    blas.reset()
    assert blas.choice(SMALL) == want  # auto runs the same probe


def test_probe_refuses_a_wrong_product(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, torch=10.0, numpy=1.0)  # "much faster", but wrong
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
    """numpy twice as fast, but a slow spell hits its whole first block and its second
    warm-up: each side's best call still decides, and a warm-up never counts."""
    n = blas.PROBE_ROUNDS
    numpy_s = [0.01] + [6.0] * n + [0.01] + [0.5] * n  # block 1 (warm-up, calls), block 2
    _scripted_clock(monkeypatch, {"torch": itertools.repeat(1.0), "numpy": iter(numpy_s)})
    choice, ratio = blas.probe(weights=SMALL)
    assert (choice, ratio) == ("numpy", pytest.approx(2.0))


def test_the_numpy_side_runs_as_the_step_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's passes under `numpy_threads` (torch on one thread), the others not."""
    seen: dict[str, set[int]] = {}
    torch.set_num_threads(2)

    def timed(name, fn, mats, inputs) -> float:
        seen.setdefault(name, set()).add(torch.get_num_threads())
        return 1.0

    monkeypatch.setattr(blas, "_timed", timed)
    blas.probe(weights=SMALL)
    assert seen == {"torch": {2}, "numpy": {1}}


def _with_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed kernel in the probe, its product a stand-in (the kernel's own values
    are tests/test_packed.py's)."""
    monkeypatch.setattr(blas.packed, "unavailable", lambda: None)
    monkeypatch.setattr(blas, "_packed_product", lambda: torch.mm)


@pytest.mark.parametrize(
    ("durations", "want", "ratio"),
    [
        ((2.0, 1.5, 1.0), "packed", 2.0),  # fastest, and 2x torch's
        ((2.0, 1.0, 1.5), "numpy", 2.0),
        ((1.0, 0.9, 0.95), "torch", 1.0 / 0.9),  # the best other is under MARGIN
    ],
)
def test_the_probe_picks_the_fastest_of_three(
    monkeypatch: pytest.MonkeyPatch, durations: tuple[float, ...], want: str, ratio: float
) -> None:
    _with_packed(monkeypatch)
    _fake_clock(monkeypatch, **dict(zip(("torch", "numpy", "packed"), durations)))
    assert blas.probe(weights=SMALL) == (want, pytest.approx(ratio))


def test_the_probe_refuses_a_wrong_packed_product(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_packed(monkeypatch)
    monkeypatch.setattr(blas, "_packed_product", lambda: lambda a, b: torch.mm(a, b) + 1e-2)
    _fake_clock(monkeypatch, torch=2.0, numpy=1.5)  # a packed pass would fail: no time
    assert blas.probe(weights=SMALL) == ("numpy", pytest.approx(2.0 / 1.5))


def test_decode_choice_with_the_packed_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.zeros(2, 2)
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("packed", 2.0))
    assert blas.decode_choice([w], blas.STREAM_BYTES) == (
        blas.packed.packed_mm,
        "lumenlm's packed kernel (lumenlm.packed), chosen by the probe",
    )
    # a step that keeps no copies cannot pack: numpy's, the next best here
    mm, why = blas.decode_choice([w], blas.STREAM_BYTES, packed_ok=False)
    assert mm is blas.numpy_mm and "keeps no copies" in why
    monkeypatch.setenv(blas.ENV, "packed")
    mm, why = blas.decode_choice([w], 0)  # forced, but unavailable (the fixture)
    assert mm is torch.mm and "off in this test" in why
    monkeypatch.setattr(blas.packed, "unavailable", lambda: None)
    assert blas.decode_choice([w], 0)[0] is blas.packed.packed_mm  # at any size


def test_decode_choice_takes_only_what_the_probe_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An iterable of weights is read no further than the probe asks (not at all for a
    small model or a settled choice)."""
    taken = []

    def weights():
        for i in range(100):
            taken.append(i)
            yield torch.zeros(4, 4)

    assert blas.decode_choice(weights(), 0)[0] is torch.mm
    assert taken == [0]  # the first, for its device and dtype
    monkeypatch.setattr(blas, "probe", lambda *a, **k: ("numpy", 2.0))
    blas.choice()
    taken.clear()
    assert blas.decode_choice(weights(), blas.STREAM_BYTES)[0] is blas.numpy_mm
    assert taken == [0]
    taken.clear()  # with a sample for the device and dtype: not read at all
    assert blas.decode_choice(weights(), 0, sample=torch.zeros(1))[0] is torch.mm
    assert blas.decode_choice(weights(), blas.STREAM_BYTES, sample=torch.zeros(1))[0] is (
        blas.numpy_mm
    )
    assert taken == []


def test_a_real_probe_runs_every_side_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fake clock: the sides (the packed kernel too, where it builds) really run."""
    monkeypatch.setattr(blas.packed, "unavailable", REAL_UNAVAILABLE)
    ran = set()
    real = blas._timed

    def timed(name, fn, mats, inputs) -> float:
        ran.add(name)
        return real(name, fn, mats, inputs)

    monkeypatch.setattr(blas, "_timed", timed)
    choice, ratio = blas.probe(rounds=1, weights=SMALL)
    assert choice in ran and ratio > 0
    assert ran == {"torch", "numpy"} | ({"packed"} if blas.packed.unavailable() is None else set())


def test_a_product_that_fails_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_packed(monkeypatch)

    def broken(a, b):
        raise RuntimeError("no")

    monkeypatch.setattr(blas, "_packed_product", lambda: broken)
    _fake_clock(monkeypatch, torch=1.0, numpy=2.0)
    assert blas.probe(weights=SMALL) == ("torch", pytest.approx(0.5))
