"""Document-aligned training windows (`train.doc_aligned`): every row starts at a document
boundary (the end-of-text token before a document, or the stream start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumenlm.cli import main
from lumenlm.data.windows import PackedDataset
from lumenlm.train import train
from train_helpers import assert_same_state, make_dataset, overrides, train_argv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=3000, n_val=300, doc_len=(5, 40))


RECIPE = {"doc_aligned": True, "max_steps": 8, "grad_accum": 2, "checkpoint_interval": 1}


def test_every_training_row_starts_a_document(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []
    original = PackedDataset.get_batch

    def spy(self: PackedDataset, indices: object) -> object:
        starts.extend(int(s) for s in self.starts[np.asarray(indices)])
        return original(self, indices)

    monkeypatch.setattr(PackedDataset, "get_batch", spy)
    train("tiny", dataset, tmp_path, overrides(**RECIPE), device="cpu", progress_bar=False)
    tokens = np.fromfile(dataset / "train.bin", dtype=np.uint16)
    assert len(starts) == 8 * 2 * 4  # steps x micro-batches x batch_size rows
    assert all(s == 0 or tokens[s] == 0 for s in starts)  # at the EOT before a document
    assert len(set(starts)) > 1 and any(s > 0 for s in starts)


def test_doc_aligned_resume_is_bit_identical(dataset: Path, tmp_path: Path) -> None:
    ref = train(
        "tiny", dataset, tmp_path / "ref", overrides(**RECIPE), device="cpu", progress_bar=False
    )
    run = train(
        "tiny",
        dataset,
        tmp_path / "run",
        overrides(**RECIPE),
        stop_at_step=3,
        device="cpu",
        progress_bar=False,
    )
    train(resume=run, device="cpu", progress_bar=False)
    assert_same_state(run, ref)


def test_doc_aligned_and_stride_exclude_each_other(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        train_argv(dataset, tmp_path, extra=["--set", "doc_aligned=true", "--set", "stride=4"])
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.stride and train.doc_aligned" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_split_without_documents_is_a_clear_error(tmp_path: Path) -> None:
    from lumenlm.data.tokens import write_token_dataset
    from lumenlm.errors import DataError

    ids = np.arange(1, 2001) % 299 + 1  # never the end-of-text id 0
    data = write_token_dataset(tmp_path / "d", {"train": ids, "val": ids}, 300, eot_id=0)
    with pytest.raises(DataError, match=r"no end-of-text token \(id 0\)"):
        train(
            "tiny", data, tmp_path / "runs", overrides(**RECIPE), device="cpu", progress_bar=False
        )


def test_low_coverage_is_announced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # documents of 60-100 tokens, context 16: each row covers only a document's start
    data = make_dataset(tmp_path / "d", n_train=3000, n_val=300, doc_len=(60, 100))
    train(
        "tiny",
        data,
        tmp_path / "runs",
        overrides(**{**RECIPE, "max_steps": 1}),
        device="cpu",
        progress_bar=False,
    )
    err = capsys.readouterr().err
    assert "document-aligned windows cover" in err and "drop train.doc_aligned" in err
