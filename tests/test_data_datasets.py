"""The dataset registry: one spec per dataset module, the CLI reads it, prepare asks no names."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
from pathlib import Path

import pytest

from data_helpers import REPO
from lumenlm.cli import build_parser
from lumenlm.data import datasets
from lumenlm.data.clean import WHITESPACE_MODES
from lumenlm.data.corpus import Corpus, DatasetSpec, OpenOptions, SourceFile, hash_route
from lumenlm.data.locate import locate
from lumenlm.data.prepare import (
    PrepareConfig,
    check_splits_feasible,
    open_configured_corpus,
    prepare_dataset,
)
from lumenlm.data.split import check_ratios
from lumenlm.data.tokens import read_meta
from lumenlm.errors import DataError


def _dataset_modules() -> list[str]:
    """The dataset modules of lumenlm.data.datasets (`_name` modules are shared layouts)."""
    return [
        m.name
        for m in pkgutil.iter_modules(datasets.__path__)
        if not m.name.startswith("_") and not m.ispkg
    ]


def test_registry_names_are_unique_and_every_spec_can_be_built() -> None:
    assert datasets.DATASETS == tuple(datasets.SPECS)
    assert len(set(datasets.DATASETS)) == len(datasets.DATASETS)
    for name, spec in datasets.SPECS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert callable(spec.build), name
        assert spec.dirnames and spec.expected, name
        assert spec.whitespace in WHITESPACE_MODES, name
        check_ratios(spec.val_ratio, spec.test_ratio)
        for remote in spec.remote:
            assert remote.url.startswith("https://"), name
        assert datasets.get_spec(name) is spec
    with pytest.raises(ValueError, match="unique"):
        datasets._registry(datasets.SPECS["text"], datasets.SPECS["text"])


def test_every_dataset_module_is_registered_once() -> None:
    import importlib

    specs = [importlib.import_module(f"lumenlm.data.datasets.{m}").SPEC for m in _dataset_modules()]
    assert sorted(s.name for s in specs) == sorted(datasets.DATASETS)
    assert "wikitext-103" in datasets.DATASETS


def test_unknown_dataset_is_one_line_listing_the_registry() -> None:
    with pytest.raises(DataError) as exc:
        datasets.get_spec("wikitext-3")
    msg = str(exc.value)
    assert "\n" not in msg and all(name in msg for name in datasets.DATASETS)


def test_cli_choices_and_help_come_from_the_registry(capsys) -> None:
    parser = build_parser()
    for name in datasets.DATASETS:
        assert parser.parse_args(["prepare", name, "--out", "o"]).dataset == name
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["prepare", "wikitext-3", "--out", "o"])
    assert exc.value.code == 2
    err = capsys.readouterr().err  # one line listing the registry, not the usage block
    assert err.count("\n") == 1 and "unknown dataset 'wikitext-3'" in err
    assert "one of " + ", ".join(datasets.DATASETS) in err
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "one of: " + ", ".join(datasets.DATASETS) in help_text
    assert "(text: your own .txt/.jsonl files)" in help_text
    keep = " and ".join(s.name for s in datasets.SPECS.values() if s.whitespace == "keep")
    assert f"keep for {keep}, tidy otherwise" in help_text


def test_download_module_knows_no_datasets() -> None:
    """The downloader is generic: it imports nothing of lumenlm except the errors."""
    tree = ast.parse((REPO / "src" / "lumenlm" / "data" / "download.py").read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert {m for m in imported if m and m.startswith("lumenlm")} == {"lumenlm.errors"}


def test_a_spec_without_downloads_needs_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LUMENLM_DATA", str(tmp_path))
    with pytest.raises(DataError) as exc:
        locate(datasets.SPECS["text"], None, offline=False, data_url=None)
    assert str(exc.value) == (
        "dataset 'text' needs --source PATH (a .txt/.jsonl file or a folder of them)"
    )


def _toy_build(root: Path, options: OpenOptions) -> Corpus:
    """A dataset defined outside the package: every line of lines.txt is one document."""
    path = root / "lines.txt"

    def reader():
        return iter(path.read_text().splitlines())

    route = hash_route(options.val_ratio, options.test_ratio)
    return Corpus("toy", root, [SourceFile(path, path.name, reader, route, "lines")], "by hash")


def test_a_registered_spec_is_all_prepare_needs(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data" / "toy-lines"
    root.mkdir(parents=True)
    (root / "lines.txt").write_text(
        "".join(f"Line {i} tells of a fox, a dog and a ball.\n" for i in range(200))
    )
    toy = DatasetSpec("toy", _toy_build, ("toy-lines",), "lines.txt", val_ratio=0.2)
    monkeypatch.setitem(datasets.SPECS, "toy", toy)
    monkeypatch.setenv("LUMENLM_DATA", str(tmp_path / "data"))
    meta = prepare_dataset(
        PrepareConfig(dataset="toy", out=tmp_path / "o", vocab_size=300, progress=False)
    )
    assert meta["dataset"] == "toy" and meta["source"]["origin"] == "$LUMENLM_DATA"
    assert meta["source"]["val_ratio"] == 0.2
    assert "doc_sep" not in meta["source"] and "urls" not in meta["source"]
    assert read_meta(tmp_path / "o")["splits"]["val"]["documents"] > 0


def test_split_check_words_come_from_the_corpus(tmp_path: Path, monkeypatch) -> None:
    one = tmp_path / "one.txt"
    one.write_text("just one document\n")
    config = PrepareConfig(dataset="text", out=tmp_path / "o", source=str(one), doc_sep="file")
    corpus, _ = open_configured_corpus(config)
    with pytest.raises(DataError) as exc:
        check_splits_feasible(corpus, config)
    assert str(exc.value).endswith(
        "only 1 documents (--doc-sep file: one per file) in one.txt (by document hash: "
        "test 0.05, val 0.05, train 0.9); raise --val-ratio and --test-ratio, split the text "
        "into more documents (--doc-sep blank or eot) or add files"
    )
    root = tmp_path / "ts"
    root.mkdir()
    (root / "input.txt").write_text("a\nb\n")
    config = PrepareConfig(dataset="tinyshakespeare", out=tmp_path / "o", source=str(root))
    corpus, _ = open_configured_corpus(config)
    corpus = dataclasses.replace(corpus, split_rule="rule")
    with pytest.raises(DataError) as exc:
        check_splits_feasible(corpus, config)
    assert str(exc.value) == (
        "tinyshakespeare: the val and test split(s) would be empty: only 1 documents in ts "
        "(rule); raise --val-ratio and --test-ratio or add documents"
    )
