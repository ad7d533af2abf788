"""Deterministic document-level decisions: train/val/test assignment and subsampling.

Both are functions of the document's text (and the seed) only, never of file order
or position, so the same document always lands in the same split and a corpus
split this way is reproducible on any machine. Different `purpose` salts keep the
split and the subsample independent of each other.
"""

from __future__ import annotations

import hashlib

from lumenlm.errors import DataError

SPLITS = ("train", "val", "test")


def unit_hash(text: str, purpose: str, seed: int = 0) -> float:
    """Map a document to a number in [0, 1), uniformly and deterministically."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=f"{purpose}:{seed}".encode())
    return int.from_bytes(h.digest(), "big") / 2.0**64


def check_ratios(val_ratio: float, test_ratio: float) -> None:
    """Ratios must leave something for training."""
    for name, r in (("--val-ratio", val_ratio), ("--test-ratio", test_ratio)):
        if not _is_number(r) or not 0.0 <= r < 1.0:
            raise DataError(f"{name} must be a share in [0, 1), got {r!r}; use e.g. 0.05")
    if val_ratio + test_ratio >= 1.0:
        raise DataError(
            f"--val-ratio + --test-ratio must be below 1 (got {val_ratio + test_ratio:g}); "
            "leave some documents for training"
        )


def assign_split(text: str, val_ratio: float, test_ratio: float, seed: int = 0) -> str:
    """'train', 'val' or 'test' for a document, by hash of its text."""
    u = unit_hash(text, "split", seed)
    if u < test_ratio:
        return "test"
    if u < test_ratio + val_ratio:
        return "val"
    return "train"


def in_fraction(text: str, fraction: float, seed: int = 0) -> bool:
    """True for a deterministic `fraction` of documents (by hash, independent of order)."""
    if fraction >= 1.0:
        return True
    return unit_hash(text, "fraction", seed) < fraction


def check_fraction(fraction: float) -> None:
    """A share of the training documents: above 0 (something to train on), at most 1."""
    if not _is_number(fraction) or not 0.0 < fraction <= 1.0:
        raise DataError(
            f"--fraction must be in (0, 1], got {fraction!r}; use e.g. 0.02 for 2% (1 keeps all)"
        )


# Seeds key a blake2b hash as f"{purpose}:{seed}", which allows 64 bytes: 2^63 fits.
MAX_SEED = (1 << 63) - 1


def check_seed(seed: int) -> None:
    """A whole number in 0..2^63-1 (negative seeds are refused, as numpy does)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"--seed must be a whole number from 0 to 2^63-1, got {seed!r}; use e.g. 0")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def contiguous_bounds(n: int, val_ratio: float, test_ratio: float) -> tuple[int, int]:
    """Cut points for a contiguous split of n units: [0,a) train, [a,b) val, [b,n) test."""
    n_test = round(n * test_ratio)
    n_val = round(n * val_ratio)
    b = n - n_test
    a = b - n_val
    return a, b
