"""Token files (.bin + meta.json), window/packed datasets, the per-epoch shuffle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lumenlm.data.tokens import TokenWriter, check_dtype, dtype_for_vocab, load_split, read_meta
from lumenlm.data.windows import PackedDataset, WindowDataset, epoch_permutation
from lumenlm.errors import DataError


def test_token_writer_and_dtype_limits(tmp_path: Path) -> None:
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "uint32"
    with pytest.raises(DataError, match="does not fit uint16"):
        check_dtype("uint16", 70_000)
    with TokenWriter(tmp_path / "x.bin", "uint16") as w:
        w.write(np.array([1, 2, 65535]))
        with pytest.raises(DataError, match="token id 65536 does not fit uint16"):
            w.write(np.array([3, 65536]))
        assert w.tokens == 3
        w.close()


def test_read_meta_and_load_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a prepared dataset"):
        read_meta(tmp_path)
    ids = np.arange(10, dtype=np.uint16)
    ids.tofile(tmp_path / "train.bin")
    meta = {
        "vocab_size": 10,
        "dtype": "uint16",
        "splits": {"train": {"tokens": 10}, "val": {"tokens": 0}, "test": {"tokens": 3}},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "val.bin").write_bytes(b"")
    (tmp_path / "test.bin").write_bytes(b"\x00" * 4)
    arr = load_split(tmp_path, "train")
    assert isinstance(arr, np.memmap) and arr.tolist() == list(range(10))
    assert load_split(tmp_path, "val").size == 0
    with pytest.raises(DataError, match="does not match meta.json"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="unknown split"):
        load_split(tmp_path, "dev")


def test_window_dataset_strides() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    ds = WindowDataset(tokens, 10)
    assert len(ds) == 9  # starts 0, 10, ..., 80 (each needs 11 tokens)
    x, y = ds[8]
    assert x.dtype == torch.int64 and x.tolist() == list(range(80, 90))
    assert y.tolist() == list(range(81, 91))
    lum = WindowDataset(tokens, 64, stride=8)
    assert len(lum) == (100 - 65) // 8 + 1
    xb, yb = lum.get_batch([0, 4])
    assert xb.shape == (2, 64) and xb[1, 0].item() == 32 and torch.equal(xb[:, 1:], yb[:, :-1])
    assert len(WindowDataset(tokens[:10], 10)) == 0
    with pytest.raises(IndexError):
        ds[9]


def test_packed_rows_start_at_the_eot_before_a_document() -> None:
    eot = 0
    docs = [[5] * 3, [6] * 12, [7] * 4, [8] * 2, [9] * 30]
    stream = np.array([t for d in docs for t in [*d, eot]], dtype=np.uint16)
    ds = PackedDataset(stream, 8, eot)
    for s in ds.starts:
        assert s == 0 or stream[s] == eot
    assert ds.starts.tolist() == [0, 16, 24]  # greedy, rows do not overlap
    x, y = ds[1]
    # the row's first target is the document's first token: documents can be started
    assert x.tolist()[:5] == [eot, 7, 7, 7, 7] and y.tolist()[0] == 7
    assert y.tolist()[-1] == stream[16 + 8]
    assert ds.documents == 5 and ds.coverage == pytest.approx(3 * 8 / 55)


def test_epoch_permutation_depends_on_seed_and_epoch_only() -> None:
    e0 = epoch_permutation(10, 3, 0)
    assert sorted(e0.tolist()) == list(range(10))
    assert e0.tolist() == epoch_permutation(10, 3, 0).tolist()  # any run, any process
    assert e0.tolist() != epoch_permutation(10, 3, 1).tolist()
    assert e0.tolist() != epoch_permutation(10, 4, 0).tolist()
    assert epoch_permutation(0, 3, 0).size == 0
