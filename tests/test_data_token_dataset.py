"""`write_token_dataset`: a prepared-dataset folder from token ids a user already has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumenlm.data.tokens import load_split, read_meta, write_token_dataset
from lumenlm.errors import DataError


def test_round_trip_and_meta(tmp_path: Path) -> None:
    train = np.array([5, 6, 0, 7, 8, 9, 0, 4], dtype=np.int64)
    val = np.array([1, 2, 3, 0], dtype=np.int64)
    out = write_token_dataset(
        tmp_path / "ds", {"train": train, "val": val}, 70000, eot_id=0, bytes_per_token=3.5
    )
    meta = read_meta(out)
    assert meta["dtype"] == "uint32"  # 70000 ids do not fit uint16
    assert meta["splits"]["train"]["documents"] == 2 and meta["splits"]["val"]["tokens"] == 4
    assert meta["splits"]["train"]["bytes"] == 28 and meta["eot_id"] == 0
    np.testing.assert_array_equal(load_split(out, "train"), train)
    np.testing.assert_array_equal(load_split(out, "val"), val)
    small = write_token_dataset(tmp_path / "small", {"train": train}, 10)
    assert read_meta(small)["dtype"] == "uint16" and read_meta(small)["eot_id"] is None


@pytest.mark.parametrize(
    ("splits", "match"),
    [
        ({"train": np.array([1, 2, 10])}, "outside 0..9"),
        ({"train": np.array([1, -1])}, "outside 0..9"),
        ({"dev": np.array([1, 2])}, "unknown split 'dev'"),
    ],
)
def test_bad_input_is_a_data_error_and_leaves_no_meta(
    tmp_path: Path, splits: dict, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        write_token_dataset(tmp_path / "ds", splits, 10)
    assert not (tmp_path / "ds" / "meta.json").exists()
