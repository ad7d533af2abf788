"""`prepare`'s numeric settings: every one is range-checked before any file is read.

Each numeric flag of `lumenlm prepare --help` has a row of values that must be refused
(zero, negative, fractions, NaN, absurdly large) and values at the edges that must be
accepted; a new numeric flag fails `test_every_numeric_flag_has_a_row` until it has one.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import pytest

from lumenlm.cli import build_parser, main
from lumenlm.data.encode import MAX_WORKERS
from lumenlm.data.prepare import PrepareConfig, check_settings, prepare_dataset
from lumenlm.data.split import MAX_SEED
from lumenlm.data.tokenizer import DEFAULT_SPECIALS, MAX_VOCAB_SIZE
from lumenlm.errors import DataError

NEED = 256 + len(DEFAULT_SPECIALS)  # the smallest byte-level vocab with the default specials

# flag -> (PrepareConfig field, values refused, values accepted)
ROWS: dict[str, tuple[str, list[object], list[object]]] = {
    "--vocab-size": (
        "vocab_size",
        [0, -1, -8000, NEED - 1, MAX_VOCAB_SIZE + 1, 99_999_999_999, 1.5, "8000", True],
        [NEED, 8000, MAX_VOCAB_SIZE],
    ),
    "--min-frequency": ("min_frequency", [0, -2, 1 << 63, 2.5, None], [1, 2, (1 << 63) - 1]),
    "--fraction": (
        "fraction",
        [0.0, -0.5, 1.0000001, 2, math.nan, math.inf, -math.inf, "0.5"],
        [1e-9, 0.02, 1.0, 1],
    ),
    "--val-ratio": ("val_ratio", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.1"], [0.0, 0.05, 0.5]),
    "--test-ratio": ("test_ratio", [-1e-9, 1.0, math.nan, -math.inf], [0.0, 0.05, 0.4]),
    "--seed": ("seed", [-1, MAX_SEED + 1, 10**70, 1.5, "0"], [0, 1, MAX_SEED]),
    "--workers": ("workers", [0, -1, MAX_WORKERS + 1, 100_000, 2.0], [None, 1, MAX_WORKERS]),
}


def _config(tmp_path: Path, **fields: object) -> PrepareConfig:
    # the source does not exist: a setting must be refused before it is looked for
    base = PrepareConfig(dataset="text", out=tmp_path / "out", source=str(tmp_path / "none"))
    return replace(base, **fields)


def test_every_numeric_flag_has_a_row() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    prepare = sub.choices["prepare"]
    shared = {o for a in parser._actions for o in a.option_strings}  # --threads: every command's
    numeric = {
        a.option_strings[0]
        for a in prepare._actions
        if a.option_strings and a.type in (int, float) and a.option_strings[0] not in shared
    }
    assert numeric == set(ROWS)


@pytest.mark.parametrize("flag", list(ROWS))
def test_bad_values_are_refused_first_naming_the_flag(tmp_path: Path, flag: str) -> None:
    field, bad, good = ROWS[flag]
    for value in bad:
        config = _config(tmp_path, **{field: value})
        with pytest.raises(DataError) as err:
            prepare_dataset(config)
        msg = str(err.value)
        assert "\n" not in msg and flag in msg, (value, msg)
        assert any(w in msg for w in ("use ", "raise", "lower", "leave it out")), msg
    for value in good:
        check_settings(_config(tmp_path, **{field: value}))
    assert not (tmp_path / "out").exists()


def test_vocab_limit_is_explained_by_dtype_and_memory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        check_settings(_config(tmp_path, vocab_size=99_999_999_999))
    msg = str(err.value)
    assert f"at most {MAX_VOCAB_SIZE}" in msg and "uint16" in msg and "uint32" in msg
    assert "memory" in msg and "lower --vocab-size" in msg
    # a vocabulary beyond an explicit uint16 is refused before training, not after
    with pytest.raises(DataError, match="does not fit uint16"):
        check_settings(_config(tmp_path, vocab_size=70_000, dtype="uint16"))
    check_settings(_config(tmp_path, vocab_size=70_000, dtype="uint32"))


def test_reused_tokenizer_ignores_the_training_settings(tmp_path: Path) -> None:
    check_settings(_config(tmp_path, tokenizer="tok.json", vocab_size=0, min_frequency=0))


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--vocab-size", "99999999999"), ("--workers", "0"), ("--seed", "-1"), ("--fraction", "0")],
)
def test_cli_prints_one_line(tmp_path: Path, capsys, flag: str, value: str) -> None:
    argv = ["prepare", "text", "--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main([*argv, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lumenlm prepare: error: {flag}")
