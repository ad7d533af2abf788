"""meta.json validation (`read_meta`, `load_split`) and the token-id check (`check_ids`).

The property: whatever a hand edit does to a real meta.json, every reader (train's,
eval's, resume's) either works or stops with a one-line `LumenError` that says to re-run
`lumenlm prepare`, never a KeyError/AttributeError/TypeError/ValueError from inside.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_helpers import write_stories
from lumenlm.data import tokens as tokens_mod
from lumenlm.data.prepare import PrepareConfig, prepare_dataset
from lumenlm.data.split import SPLITS
from lumenlm.data.tokens import META_NAME, check_ids, load_split, read_meta
from lumenlm.errors import DataError, LumenError


class _Delete:
    """The mutation that removes the field."""

    def __repr__(self) -> str:
        return "<deleted>"


DELETE = _Delete()
# Wrong types and out-of-range values tried on every field of the real meta.json.
MUTATIONS: list[Any] = [
    DELETE,
    None,
    "many",
    "float64",
    "",
    [],
    {},
    [1, 2],
    {"x": 1},
    -1,
    0,
    1.5,
    True,
    2**40,
    float("nan"),
]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `lumenlm prepare` output (tiny: 60 stories, vocab 300)."""
    root = tmp_path_factory.mktemp("real")
    write_stories(root / "s.txt", n=60)
    config = PrepareConfig(
        dataset="text",
        out=root / "out",
        source=str(root / "s.txt"),
        vocab_size=300,
        doc_sep="eot",
        val_ratio=0.2,
        test_ratio=0.2,
        progress=False,
    )
    prepare_dataset(config)
    return root / "out"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field path in a JSON document (object keys and list indexes), depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, (dict, list)):
            yield from _paths(value, (*prefix, key))


def _mutate(meta: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(meta)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def _consume(data_dir: Path) -> None:
    """What train, eval and resume do with a dataset folder's meta.json and splits."""
    from lumenlm.evaluate.lm import split_bytes_per_token
    from lumenlm.train.data import open_windows
    from lumenlm.train.resume import data_fingerprint

    meta = read_meta(data_dir)
    vocab = int(meta["vocab_size"])  # train's model vocabulary
    data_fingerprint(meta)
    for split in SPLITS:
        ids = load_split(data_dir, split)
        check_ids(ids, vocab, str(data_dir / f"{split}.bin"))
        split_bytes_per_token(meta, split)
    open_windows(data_dir, "train", 4, None, doc_aligned=True)


def _assert_one_line_advice(exc: LumenError) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert "lumenlm prepare" in msg or "upgrade lumenlm" in msg, msg
    return msg


def test_every_mutation_of_every_field_is_fine_or_one_line(real: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    meta = json.loads((real / META_NAME).read_text())
    failures: list[str] = []
    refused = 0
    paths = list(_paths(meta))
    assert len(paths) > 60  # the whole document, nested fields included
    for path in paths:
        for value in MUTATIONS:
            (data / META_NAME).write_text(json.dumps(_mutate(meta, path, value)))
            try:
                _consume(data)
            except LumenError as exc:
                refused += 1
                msg = str(exc)
                if "\n" in msg or ("lumenlm prepare" not in msg and "upgrade lumenlm" not in msg):
                    failures.append(f"{'.'.join(map(str, path))} = {value!r}: {msg}")
            except Exception as exc:  # the bug this test exists for
                failures.append(f"{'.'.join(map(str, path))} = {value!r}: {exc!r}")
    assert not failures, "\n".join(failures[:20])
    assert refused > 100


# A wrong value of each field a reader relies on is refused, naming that field.
REFUSED: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("dtype",), [DELETE, "float64", None, 16, [], "UINT16"]),
    (("vocab_size",), [DELETE, "many", None, 0, -1, 1.5, True, 70000, 2**40, []]),
    (("splits",), [DELETE, [], {}, None, "train", 3]),
    (("splits", "train"), [None, [], 5, "x", {}]),
    (("splits", "val", "tokens"), [DELETE, "many", -1, 1.5, None, True]),
    (("splits", "test", "documents"), ["x", -1, 2.5]),
    (("splits", "train", "bytes"), ["x", -3, 1.5, []]),
    (("splits", "train", "content_tokens"), ["x", -1]),
    (("splits", "train", "sha256"), [5, [], {}]),
    (("eot_id",), [-1, 300, "0", 1.5, [], True]),
    (("pad_id",), [-1, 10**9, "1", {}]),
    (("special_tokens",), [[], "x", 5]),
    (("special_tokens", "<|endoftext|>"), [999, None, "0", -1]),
    (("bytes_per_token",), ["x", -1, 0, [], True, float("inf")]),
    (("bytes_per_token", "val"), ["x", -1, 0, []]),
    (("tokenizer",), ["x", [], 5]),
    (("tokenizer", "sha256"), [5, []]),
    (("tokenizer", "vocab_size"), ["x", 0, -2]),
    (("version",), ["1", 0, -1, 1.5, None]),
]


@pytest.mark.parametrize(("path", "values"), REFUSED, ids=[".".join(p) for p, _ in REFUSED])
def test_wrong_values_of_read_fields_are_refused_by_name(
    real: Path, tmp_path: Path, path: tuple[Any, ...], values: list[Any]
) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    meta = json.loads((real / META_NAME).read_text())
    for value in values:
        (data / META_NAME).write_text(json.dumps(_mutate(meta, path, value)))
        with pytest.raises(DataError) as err:
            read_meta(data)
        msg = _assert_one_line_advice(err.value)
        assert f"field {'.'.join(path)} " in msg or path[-1] in msg, (value, msg)


def test_the_reported_cases_name_the_field(real: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    meta = json.loads((real / META_NAME).read_text())
    for field, value, expected in (
        ("dtype", "float64", 'field dtype is "float64", expected "uint16" or "uint32"'),
        ("splits", [], "field splits is [], expected an object with train, val and test"),
        ("vocab_size", "many", 'field vocab_size is "many", expected a whole number from 1'),
    ):
        (data / META_NAME).write_text(json.dumps({**meta, field: value}))
        with pytest.raises(DataError) as err:
            load_split(data, "train")
        assert expected in str(err.value) and "re-run `lumenlm prepare`" in str(err.value)


def test_newer_version_and_unknown_split(real: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    meta = json.loads((real / META_NAME).read_text())
    (data / META_NAME).write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(DataError, match="version 2 is newer than this lumenlm reads"):
        read_meta(data)
    splits = {**meta["splits"], "dev": meta["splits"]["val"]}
    (data / META_NAME).write_text(json.dumps({**meta, "splits": splits}))
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_meta(data)
    (data / META_NAME).write_text(json.dumps({**meta, "extra": {"new": "field"}}))
    assert read_meta(data)["extra"] == {"new": "field"}  # unknown fields are ignored


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'"meta"',
        b"null",
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
        b'{"vocab_size": ' + b"9" * 5000 + b"}",  # beyond Python's int-parsing limit
        b"[" * 100_000,  # nesting deeper than the parser's recursion limit
    ],
    ids=["empty", "truncated", "list", "string", "null", "utf16", "bom", "hugeint", "deep"],
)
def test_unreadable_meta_json_is_one_line(real: Path, tmp_path: Path, raw: bytes) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    (data / META_NAME).write_bytes(raw)
    with pytest.raises(DataError) as err:
        read_meta(data)
    _assert_one_line_advice(err.value)


# ----------------------------------------------------------------------------- check_ids


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.int64])
@pytest.mark.parametrize("scan", [7, 1 << 24])  # slices smaller than the array, and one
def test_check_ids_finds_any_out_of_range_id_anywhere(
    monkeypatch: pytest.MonkeyPatch, dtype: type, scan: int
) -> None:
    monkeypatch.setattr(tokens_mod, "_SCAN", scan)
    rng = np.random.default_rng(0)
    vocab = 300
    for trial in range(40):
        n = int(rng.integers(1, 200))
        ids = rng.integers(0, vocab, size=n).astype(dtype)
        check_ids(ids, vocab, "x.bin")  # in range: passes
        at = int(rng.integers(n))
        signed = np.issubdtype(dtype, np.signedinteger)
        bad = int(rng.integers(vocab, 2 * vocab)) if trial % 2 or not signed else -3
        ids[at] = bad
        with pytest.raises(DataError) as err:
            check_ids(ids, vocab, "d/train.bin")
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("d/train.bin holds token id")
        assert f"id {bad} at position {at}, outside the vocabulary (0..{vocab - 1})" in msg
        assert "re-run `lumenlm prepare`" in msg
    check_ids(np.zeros(0, dtype=dtype), vocab, "empty.bin")


def test_check_ids_on_a_memmapped_split_and_a_corrupted_one(real: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(real, tmp_path / "d"))
    vocab = read_meta(data)["vocab_size"]
    for split in SPLITS:
        check_ids(load_split(data, split), vocab, f"{split}.bin")
    raw = bytearray((data / "val.bin").read_bytes())
    raw[10:12] = (60000).to_bytes(2, "little")  # id 60000 at position 5, within uint16
    (data / "val.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val.bin holds token id 60000 at position 5, outside"):
        check_ids(load_split(data, "val"), vocab, str(data / "val.bin"))


def test_check_ids_refuses_non_integer_arrays() -> None:
    with pytest.raises(DataError, match="holds float64 values, not token ids"):
        check_ids(np.array([1.0, 2.0]), 10, "f.bin")
