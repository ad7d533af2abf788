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
        ({"train": np.array([1.7, 2.0])}, "1-D integer array, got 1-D float64"),
        ({"train": np.array([[1, 2], [3, 4]])}, "1-D integer array, got 2-D"),
        ({"train": np.array(["a", "b"])}, "1-D integer array"),
    ],
)
def test_bad_input_is_a_data_error_and_leaves_no_meta(
    tmp_path: Path, splits: dict, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        write_token_dataset(tmp_path / "ds", splits, 10)
    assert not (tmp_path / "ds" / "meta.json").exists()


def test_special_ids_checked_and_stale_splits_removed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="eot_id 10 is outside 0..9"):
        write_token_dataset(tmp_path / "ds", {"train": np.array([1])}, 10, eot_id=10)
    write_token_dataset(tmp_path / "ds", {"train": np.arange(5), "val": np.arange(5)}, 10)
    write_token_dataset(tmp_path / "ds", {"train": np.arange(3)}, 10)
    assert not (tmp_path / "ds" / "val.bin").exists()  # not read back as if current
    with pytest.raises(DataError, match="val.bin is missing"):
        load_split(tmp_path / "ds", "val")
