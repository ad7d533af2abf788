"""Token files: flat `train.bin`/`val.bin`/`test.bin` streams plus `meta.json`.

Each `.bin` is a raw little-endian array of token ids (uint16 when the vocab
fits, else uint32) with `<|endoftext|>` after every document; `np.memmap` reads
it without loading it. `meta.json` says what the files hold (dtype, counts,
hashes, tokenizer settings), so readers never guess.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lumenlm.data.split import SPLITS
from lumenlm.errors import DataError

META_NAME = "meta.json"
META_VERSION = 1
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def dtype_for_vocab(vocab_size: int) -> str:
    """'uint16' when every id fits (vocab <= 65536), else 'uint32'."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def check_dtype(dtype: str, vocab_size: int) -> None:
    """The chosen dtype must hold every id of the vocabulary."""
    if dtype not in DTYPES:
        raise DataError(f"unknown token dtype {dtype!r}; use uint16 or uint32")
    limit = int(np.iinfo(DTYPES[dtype]).max) + 1
    if vocab_size > limit:
        raise DataError(
            f"vocab size {vocab_size} does not fit {dtype} (max {limit} ids); use --dtype uint32"
        )


class TokenWriter:
    """Appends token arrays to a `.bin` file, counting tokens and hashing the bytes."""

    def __init__(self, path: str | os.PathLike[str], dtype: str) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
        self.limit = int(np.iinfo(self.dtype).max)
        self.tokens = 0
        self._sha = hashlib.sha256()
        self._file = open(self.path, "wb")

    def write(self, ids: np.ndarray) -> None:
        """Append ids (any integer array); an id beyond the dtype is a `DataError`."""
        if ids.size == 0:
            return
        if int(ids.max()) > self.limit or int(ids.min()) < 0:
            bad = int(ids.max()) if int(ids.max()) > self.limit else int(ids.min())
            raise DataError(
                f"token id {bad} does not fit {self.dtype.name} (0..{self.limit}); "
                "use --dtype uint32 or a smaller vocabulary"
            )
        data = ids.astype(self.dtype, copy=False).tobytes()
        self._file.write(data)
        self._sha.update(data)
        self.tokens += int(ids.size)

    def close(self) -> str:
        """Flush and close; returns the file's sha256."""
        self._file.close()
        return self._sha.hexdigest()

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:
            self._file.close()


def write_meta(data_dir: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write meta.json (stable key order, no timestamps, so reruns are byte-identical)."""
    path = Path(data_dir) / META_NAME
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_token_dataset(
    data_dir: str | os.PathLike[str],
    splits: Mapping[str, np.ndarray],
    vocab_size: int,
    *,
    eot_id: int | None = None,
    pad_id: int | None = None,
    bytes_per_token: float | None = None,
) -> Path:
    """A prepared-dataset folder from token ids you already have (no tokenizer).

    Writes `<split>.bin` for each of `splits` (train, val, test) and a `meta.json` that
    `lumenlm train` and `lumenlm eval` read like `lumenlm prepare`'s output. With
    `eot_id`, documents are counted and `train.doc_aligned` can find their starts;
    `bytes_per_token` (UTF-8 bytes per token of the text) enables bits-per-byte.
    """
    arrays: dict[str, np.ndarray] = {}
    for split, ids in splits.items():
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        arr = np.asarray(ids)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                f"{split}: token ids must be a 1-D integer array, got {arr.ndim}-D {arr.dtype}"
            )
        if arr.size and (int(arr.max()) >= vocab_size or int(arr.min()) < 0):
            raise DataError(f"{split} holds ids outside 0..{vocab_size - 1}")
        arrays[split] = arr
    for name, special in (("eot_id", eot_id), ("pad_id", pad_id)):
        if special is not None and not 0 <= special < vocab_size:
            raise DataError(f"{name} {special} is outside 0..{vocab_size - 1}")
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    # meta.json goes last, so a half-written folder never reads as a dataset; token files
    # of splits not given this time are removed, so none is left from an earlier write.
    (out / META_NAME).unlink(missing_ok=True)
    for split in SPLITS:
        if split not in arrays:
            (out / f"{split}.bin").unlink(missing_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    info: dict[str, Any] = {}
    for split, arr in arrays.items():
        with TokenWriter(out / f"{split}.bin", dtype) as writer:
            writer.write(arr)
            sha = writer.close()
        docs = int((arr == eot_id).sum()) if eot_id is not None else int(arr.size > 0)
        info[split] = {"tokens": int(arr.size), "documents": docs, "sha256": sha}
        if bytes_per_token is not None:
            info[split]["bytes"] = round(int(arr.size) * bytes_per_token)
    meta = {
        "version": META_VERSION,
        "vocab_size": int(vocab_size),
        "dtype": dtype,
        "eot_id": eot_id,
        "pad_id": pad_id,
        "splits": info,
        "bytes_per_token": bytes_per_token,
        "tokenizer": {"vocab_size": int(vocab_size)},
    }
    write_meta(out, meta)
    return out


def read_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The dataset's meta.json; `DataError` when the folder is not a prepared dataset."""
    path = Path(data_dir) / META_NAME
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a prepared dataset (no {META_NAME}); run `lumenlm prepare` first"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); run `lumenlm prepare` again") from None
    if not isinstance(meta, dict) or "dtype" not in meta or "splits" not in meta:
        raise DataError(f"{path} is not a lumenlm dataset meta.json; run `lumenlm prepare` again")
    return meta


def load_split(data_dir: str | os.PathLike[str], split: str) -> np.ndarray:
    """Token ids of one split as a read-only memmap (nothing is loaded until used)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    meta = read_meta(data_dir)
    dtype = np.dtype(DTYPES[meta["dtype"]]).newbyteorder("<")
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{path} is missing; run `lumenlm prepare` again")
    n_bytes = path.stat().st_size
    expected = meta["splits"].get(split, {}).get("tokens")
    if n_bytes % dtype.itemsize or (expected is not None and n_bytes != expected * dtype.itemsize):
        raise DataError(
            f"{path} has {n_bytes} bytes, which does not match meta.json "
            f"({expected} {meta['dtype']} tokens); run `lumenlm prepare` again"
        )
    if n_bytes == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
