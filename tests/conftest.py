"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_helpers import shared_data_dir

# Tests share 2 loaded cores, and tiny models are overhead-bound: one intra-op thread
# is fastest and steady. Set at import, so module-scoped fixtures run with it too.
torch.set_num_threads(1)


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
