"""`lumenlm.packed`: the packed decode product against torch's, and when it is not used.

Products must equal torch's to fp32 rounding (1e-5 of the largest entry, both against
fp64) at every row count a decode step or the server's batch uses, for widths that are
not a whole number of panels, odd inner sizes and strided inputs. The kernel runs on
torch's OpenMP pool: one runtime in the process, on any thread count.
"""

from __future__ import annotations

import pytest
import torch

from lumenlm import cbuild, packed


@pytest.fixture
def kernel() -> None:
    why = packed.unavailable()
    if why is not None:
        pytest.skip(f"the packed kernel is unavailable here: {why}")


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 13, 33])
@pytest.mark.parametrize(("k", "n"), [(96, 256), (97, 250), (5, 3), (768, 1280)])
def test_packed_product_equals_torch(kernel: None, rows: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + n)
    x = torch.randn(rows, k, generator=g)
    w = torch.randn(k, n, generator=g)
    want = x.double() @ w.double()
    got = packed.packed_mm(x, packed.pack(w))
    assert got.shape == (rows, n) and got.dtype == torch.float32
    assert _err(got, want) < 1e-5
    assert _err(x @ w, want) < 1e-5  # the bar torch's own product meets


def test_strided_inputs_and_a_transposed_weight(kernel: None) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 96, generator=g)  # an (out, in) nn.Linear weight
    x = torch.randn(6, 192, generator=g)[:, ::2]  # every other column
    want = x.double() @ w.t().double()
    assert _err(packed.packed_mm(x, packed.pack(w.t())), want) < 1e-5


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_any_thread_count_gives_the_same_product(kernel: None, threads: int) -> None:
    """Each output column is one thread's sum in a fixed order: the same bits on any
    number of threads."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(8, 300, generator=g), packed.pack(torch.randn(300, 1000, generator=g))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = packed.packed_mm(x, w)
        torch.set_num_threads(threads)
        assert torch.equal(packed.packed_mm(x, w), one)
    finally:
        torch.set_num_threads(before)


def test_one_openmp_runtime_serves_torch_and_the_kernel(kernel: None) -> None:
    assert len(cbuild.openmp_runtimes()) == 1


def test_the_packed_matrix_keeps_its_shape_and_memory(kernel: None) -> None:
    m = packed.pack(torch.zeros(10, 20))
    assert m.shape == (10, 20)
    assert m.nbytes == 10 * 32 * 4  # two panels of 16 columns


def test_wrong_inputs_are_refused(kernel: None) -> None:
    w = packed.pack(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="does not fit"):
        packed.packed_mm(torch.zeros(2, 5), w)
    with pytest.raises(ValueError, match="2-D fp32 CPU"):
        packed.pack(torch.zeros(4, 8, dtype=torch.float64))


def test_without_a_compiler_it_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet
    packed._load.cache_clear()
    try:
        why = packed.unavailable()
        assert why is not None
        if why not in ("not Linux x86-64", "the CPU lacks AVX2/FMA"):
            assert "no C compiler" in why
        with pytest.raises(RuntimeError, match="unavailable"):
            packed.pack(torch.zeros(2, 2))
    finally:
        packed._load.cache_clear()


def test_a_changed_default_dtype_changes_nothing(kernel: None) -> None:
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(3, 40, generator=g), torch.randn(40, 24, generator=g)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = packed.packed_mm(x, packed.pack(w))
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == torch.float32
    assert _err(got, x.double() @ w.double()) < 1e-5


def test_a_row_gets_the_same_bits_alone_and_in_any_batch(kernel: None) -> None:
    """Every output is the same in-order sum whatever the number of rows, so a request
    decodes the same alone and in the server's batch (docs/SERVING.md)."""
    g = torch.Generator().manual_seed(3)
    w = packed.pack(torch.randn(300, 1000, generator=g))
    rows = torch.randn(33, 300, generator=g)
    alone = torch.cat([packed.packed_mm(rows[i : i + 1], w) for i in range(33)])
    for m in (2, 3, 4, 5, 6, 7, 8, 9, 13, 33):
        assert torch.equal(packed.packed_mm(rows[:m], w), alone[:m]), m
