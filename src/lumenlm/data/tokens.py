"""Token files: flat `train.bin`/`val.bin`/`test.bin` streams plus `meta.json`.

Each `.bin` is a raw little-endian array of token ids (uint16 when the vocab
fits, else uint32) with `<|endoftext|>` after every document; `np.memmap` reads
it without loading it. `meta.json` says what the files hold (dtype, counts,
hashes, tokenizer settings), so readers never guess.

`read_meta` checks every field a reader relies on (train, eval, resume), so a
hand-edited or truncated meta.json is one line naming the field, never a KeyError
deep inside a consumer; `check_ids` is the one pass that proves a token file's ids
fit the vocabulary before an embedding lookup would fail on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lumenlm.data.split import SPLITS
from lumenlm.errors import DataError, first_line

META_NAME = "meta.json"
META_VERSION = 1
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
# How many distinct ids each token-file dtype holds (uint16: 65536, uint32: 2**32).
ID_LIMITS = {name: int(np.iinfo(t).max) + 1 for name, t in DTYPES.items()}
REPREPARE = "re-run `lumenlm prepare` to rewrite it"
# Elements per slice when `check_ids` scans a token file (64 MiB of uint32).
_SCAN = 1 << 24


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
    """The dataset's meta.json, checked (`validate_meta`); `DataError` when the folder is
    not a prepared dataset or a field is missing or wrong."""
    path = Path(data_dir) / META_NAME
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a prepared dataset (no {META_NAME}); run `lumenlm prepare` first"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert
        raise DataError(
            f"{path} is not valid JSON ({first_line(exc)}); run `lumenlm prepare` again"
        ) from None
    return validate_meta(meta, path)


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


def check_ids(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """Every id in `tokens` must lie in 0..vocab_size-1; else a one-line `DataError`.

    An id past the vocabulary would otherwise surface as torch's "IndexError: index out of
    range in self" in the middle of training or evaluation. One pass over the array, in
    slices, so a memmapped split is read once and never held in memory; call it once per
    split when it is opened. `where` names the tokens in the message (e.g. the file path).
    """
    flat = np.asarray(tokens).reshape(-1)
    if flat.size == 0:
        return
    if not np.issubdtype(flat.dtype, np.integer):
        raise DataError(f"{where} holds {flat.dtype} values, not token ids; {REPREPARE}")
    signed = np.issubdtype(flat.dtype, np.signedinteger)
    for start in range(0, flat.size, _SCAN):
        chunk = flat[start : start + _SCAN]
        top = int(chunk.max())
        low = int(chunk.min()) if signed else 0
        if top >= vocab_size or low < 0:
            bad = top if top >= vocab_size else low
            at = start + int(np.argmax(chunk == bad))
            raise DataError(
                f"{where} holds token id {bad} at position {at}, outside the vocabulary "
                f"(0..{vocab_size - 1}): the file is corrupt or from another tokenizer; "
                "re-run `lumenlm prepare`"
            )


# ----------------------------------------------------------------------------- meta.json checks


def validate_meta(meta: Any, path: Path) -> dict[str, Any]:
    """`meta` if every field readers use has the right type and range; else a one-line
    `DataError` naming the field (`splits.train.tokens`) and saying to re-run prepare.

    Required: `dtype`, `vocab_size`, `splits` (train/val/test entries with `tokens`).
    Optional, checked when present: `version`, `eot_id`, `pad_id`, `special_tokens`,
    `bytes_per_token`, `tokenizer`, and each split's counts and sha256. Other fields are
    informational and not checked; unknown fields are ignored (newer writers may add some).
    """
    if not isinstance(meta, dict):
        raise DataError(
            f"{path} is not a lumenlm dataset meta.json (not a JSON object); {REPREPARE}"
        )
    for key in ("dtype", "vocab_size", "splits"):
        if key not in meta:
            raise DataError(f"{path}: field {key} is missing; {REPREPARE}")
    version = meta.get("version", META_VERSION)
    if not _is_int(version) or version < 1:
        raise _bad(path, "version", version, str(META_VERSION))
    if version > META_VERSION:
        raise DataError(
            f"{path}: version {version} is newer than this lumenlm reads ({META_VERSION}); "
            "upgrade lumenlm or re-run `lumenlm prepare` with this one"
        )
    dtype = meta["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(path, "dtype", dtype, " or ".join(f'"{d}"' for d in DTYPES))
    vocab = meta["vocab_size"]
    if not _is_int(vocab) or not 1 <= vocab <= ID_LIMITS[dtype]:
        raise _bad(
            path, "vocab_size", vocab, f"a whole number from 1 to {ID_LIMITS[dtype]} ({dtype} ids)"
        )
    _check_splits(meta["splits"], path)
    for key in ("eot_id", "pad_id"):
        _check_id(meta.get(key), vocab, path, key)
    specials = meta.get("special_tokens")
    if specials is not None:
        if not isinstance(specials, dict):
            raise _bad(path, "special_tokens", specials, "an object of token -> id")
        for token, i in specials.items():
            _check_id(i, vocab, path, f"special_tokens.{token}", optional=False)
    _check_bytes_per_token(meta.get("bytes_per_token"), path)
    tok = meta.get("tokenizer")
    if tok is not None:
        if not isinstance(tok, dict):
            raise _bad(path, "tokenizer", tok, "an object (file, sha256, vocab_size, ...)")
        if tok.get("sha256") is not None and not isinstance(tok["sha256"], str):
            raise _bad(path, "tokenizer.sha256", tok["sha256"], "a hex string")
        tv = tok.get("vocab_size")
        if tv is not None and (not _is_int(tv) or tv < 1):
            raise _bad(path, "tokenizer.vocab_size", tv, "a positive whole number")
    return meta


def _check_splits(splits: Any, path: Path) -> None:
    if not isinstance(splits, dict) or not splits:
        raise _bad(path, "splits", splits, "an object with train, val and test entries")
    for name, info in splits.items():
        if name not in SPLITS:
            raise DataError(
                f"{path}: splits has an unknown split {name!r} (use {', '.join(SPLITS)}); "
                f"{REPREPARE}"
            )
        if not isinstance(info, dict):
            raise _bad(path, f"splits.{name}", info, "an object with tokens, documents, sha256")
        if "tokens" not in info:
            raise DataError(f"{path}: field splits.{name}.tokens is missing; {REPREPARE}")
        for key in ("tokens", "documents", "content_tokens", "bytes"):
            value = info.get(key)
            if (value is not None or key == "tokens") and (not _is_int(value) or value < 0):
                raise _bad(path, f"splits.{name}.{key}", value, "a whole number >= 0")
        for key in ("sha256", "file"):
            if info.get(key) is not None and not isinstance(info[key], str):
                raise _bad(path, f"splits.{name}.{key}", info[key], "a string")


def _check_id(value: Any, vocab: int, path: Path, field: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or not 0 <= value < vocab:
        raise _bad(
            path,
            field,
            value,
            f"a token id from 0 to {vocab - 1}" + (" or null" if optional else ""),
        )


def _check_bytes_per_token(bpt: Any, path: Path) -> None:
    """None, a positive number, or an object of split (or "all") -> positive number or null."""
    if bpt is None or _is_ratio(bpt):
        return
    if not isinstance(bpt, dict):
        raise _bad(
            path, "bytes_per_token", bpt, "a positive number or an object of split -> number"
        )
    for key, value in bpt.items():
        if value is not None and not _is_ratio(value):
            raise _bad(path, f"bytes_per_token.{key}", value, "a positive number or null")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ratio(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _bad(path: Path, field: str, value: Any, expected: str) -> DataError:
    return DataError(f"{path}: field {field} is {_show(value)}, expected {expected}; {REPREPARE}")


def _show(value: Any) -> str:
    """A field's value as JSON, cut to 40 characters (the message stays one short line)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."
