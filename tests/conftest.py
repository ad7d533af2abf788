"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from data_helpers import shared_data_dir

# Tests share 2 loaded cores, and tiny models are overhead-bound: one intra-op thread
# is fastest and steady. Set at import, so module-scoped fixtures run with it too, and
# for the CLI (which sizes torch's pool itself: devices.configure_threads), in process
# and in the `lumenlm` subprocesses the tests start.
torch.set_num_threads(1)
os.environ.setdefault("LUMENLM_THREADS", "1")
# `--dtype auto` (the default of generate, chat and serve) times bf16 against fp32 on a
# CPU with native bf16, so two runs could choose differently there; tests that compare
# outputs across runs need one answer on every CPU. tests/test_infer_dtype.py lifts it.
os.environ.setdefault("LUMENLM_DTYPE_AUTO", "fp32")
# On an AMD CPU the CLI re-runs itself with lumenlm.mkl_shim preloaded, and MKL's kernels
# then round differently from this (unshimmed) test process: subprocesses started by
# tests stay unshimmed so their outputs compare with in-process ones. test_mkl_shim.py
# lifts it.
os.environ.setdefault("LUMENLM_MKL", "system")


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("local datasets not found: set LUMENLM_DATA")
    return d


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    # Tiny test models are overhead-bound: one intra-op thread is fastest and steady.
    torch.set_num_threads(1)


@pytest.fixture(params=["ce_rows", "torch ops"])
def ce_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: with `lumenlm.ce_rows`'s C kernel scoring the logits, and with
    it off (`LUMENLM_CE_ROWS=0`: torch's element-wise ops), so both paths stay checked."""
    from lumenlm import ce_rows

    if request.param == "torch ops":
        monkeypatch.setenv(ce_rows.ENV, "0")
    elif (why := ce_rows.unavailable()) is not None:
        pytest.skip(f"the C cross-entropy kernel is unavailable: {why}")
    return request.param
