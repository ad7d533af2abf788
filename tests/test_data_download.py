"""Downloads against a real local HTTP server: resume via Range, sha256 check, cache, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from data_helpers import serve_folder, write_stories
from lumenlm.cli import main
from lumenlm.data import datasets, download
from lumenlm.errors import DataError


def _payload(tmp_path: Path, size: int = 300_000) -> tuple[Path, bytes]:
    served = tmp_path / "served"
    served.mkdir()
    data = bytes((i * 7 + i // 256) % 251 for i in range(size))
    (served / "blob.bin").write_bytes(data)
    return served, data


def test_download_complete_then_cached(tmp_path: Path) -> None:
    served, data = _payload(tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    with serve_folder(served) as (base, handler):
        dest = tmp_path / "cache" / "blob.bin"
        download.download(f"{base}/blob.bin", dest, sha256=digest, size=len(data), progress=False)
        assert dest.read_bytes() == data
        assert not dest.with_name("blob.bin.part").exists()
        n = len(handler.requests)
        download.download(f"{base}/blob.bin", dest, sha256=digest, size=len(data), progress=False)
        assert len(handler.requests) == n  # served from the cache, no request


def test_download_resumes_after_interruption(tmp_path: Path) -> None:
    served, data = _payload(tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "cache" / "blob.bin"
    with serve_folder(served) as (base, handler):
        handler.cut_after = 100_000
        with pytest.raises(DataError, match="resumes"):
            download.download(f"{base}/blob.bin", dest, sha256=digest, progress=False)
        part = dest.with_name("blob.bin.part")
        assert part.is_file() and 0 < part.stat().st_size < len(data)
        assert not dest.exists()
        have = part.stat().st_size
        download.download(f"{base}/blob.bin", dest, sha256=digest, progress=False)
        assert handler.requests[-1] == ("/blob.bin", f"bytes={have}-")
    assert dest.read_bytes() == data


def test_download_bad_checksum_removes_file(tmp_path: Path) -> None:
    served, _ = _payload(tmp_path)
    dest = tmp_path / "cache" / "blob.bin"
    with serve_folder(served) as (base, _):
        with pytest.raises(DataError, match="corrupt"):
            download.download(f"{base}/blob.bin", dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_download_unreachable_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        download.download(
            "http://127.0.0.1:9/nothing.txt", tmp_path / "x.txt", progress=False, timeout=5
        )
    assert "\n" not in str(exc.value) and "could not download" in str(exc.value)


def test_prepare_downloads_tinyshakespeare_and_wikitext_zip(tmp_path: Path, monkeypatch) -> None:
    served = tmp_path / "served"
    (served / "tinyshakespeare").mkdir(parents=True)
    text = "".join(f"Line {i}: to be or not to be, that is the question.\n" for i in range(400))
    (served / "tinyshakespeare" / "input.txt").write_text(text)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "valid", "test"):
            arts = "".join(
                f" \n = Article {split} {i} = \n \n Text of {split} {i} . \n" for i in range(8)
            )
            zf.writestr(f"wikitext-2-raw/wiki.{split}.raw", arts)
    (served / "wikitext-2").mkdir()
    (served / "wikitext-2" / "wikitext-2-raw-v1.zip").write_bytes(buf.getvalue())
    # the fake files are not the official ones: drop the known sizes/digests for this test
    spec = datasets.SPECS["tinyshakespeare"]
    monkeypatch.setitem(
        datasets.SPECS,
        "tinyshakespeare",
        dataclasses.replace(spec, remote=(download.RemoteFile("input.txt", "unused"),)),
    )
    wspec = datasets.SPECS["wikitext-2"]
    zremote = wspec.remote[0]
    monkeypatch.setitem(
        datasets.SPECS,
        "wikitext-2",
        dataclasses.replace(
            wspec,
            remote=(download.RemoteFile(zremote.filename, "unused", members=zremote.members),),
        ),
    )
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    monkeypatch.delenv("LUMENLM_OFFLINE", raising=False)
    with serve_folder(served) as (base, handler):
        monkeypatch.setenv("LUMENLM_DATA_URL", base)
        assert (
            main(
                [
                    "prepare",
                    "tinyshakespeare",
                    "--out",
                    str(tmp_path / "ts"),
                    "--vocab-size",
                    "300",
                    "--no-progress",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "prepare",
                    "wikitext-2",
                    "--out",
                    str(tmp_path / "wt"),
                    "--vocab-size",
                    "300",
                    "--no-progress",
                ]
            )
            == 0
        )
        n = len(handler.requests)
        assert (
            main(
                [
                    "prepare",
                    "tinyshakespeare",
                    "--out",
                    str(tmp_path / "ts2"),
                    "--vocab-size",
                    "300",
                    "--no-progress",
                ]
            )
            == 0
        )
        assert len(handler.requests) == n  # second run uses the cache
    assert (tmp_path / "cache" / "tinyshakespeare" / "input.txt").read_text() == text
    assert (tmp_path / "cache" / "wikitext-2" / "wiki.train.raw").is_file()
    for name in ("ts", "ts2"):
        assert (tmp_path / name / "train.bin").is_file()
    assert (tmp_path / "ts" / "train.bin").read_bytes() == (
        tmp_path / "ts2" / "train.bin"
    ).read_bytes()
    # downloaded then cached: the same meta.json, byte for byte (origin "download" + URL)
    meta = (tmp_path / "ts" / "meta.json").read_bytes()
    assert meta == (tmp_path / "ts2" / "meta.json").read_bytes()
    assert json.loads(meta)["source"]["origin"] == "download"


def test_missing_source_offline_is_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMENLM_DATA", str(tmp_path / "nothing-here"))
    out = tmp_path / "out"
    rc = main(["prepare", "tinystories", "--out", str(out), "--offline"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "offline" in err and "TinyStories-train.txt" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_stories_file_helper_layout(tmp_path: Path) -> None:
    stories = write_stories(tmp_path / "s.txt", n=3)
    assert (tmp_path / "s.txt").read_text().count("<|endoftext|>") == len(stories)


def _wikitext_zip(subdir: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "valid", "test"):
            arts = "".join(
                f" \n = Article {split} {i} = \n \n Text of {split} {i} . \n" for i in range(8)
            )
            zf.writestr(f"{subdir}/wiki.{split}.raw", arts)
        zf.writestr(f"{subdir}/README", "not extracted")
    return buf.getvalue()


def test_prepare_downloads_wikitext_103_zip(tmp_path: Path, monkeypatch) -> None:
    """The real wikitext-103 spec (no digest pinned) against a synthetic zip on a local server."""
    served = tmp_path / "served"
    (served / "wikitext-103").mkdir(parents=True)
    (served / "wikitext-103" / "wikitext-103-raw-v1.zip").write_bytes(
        _wikitext_zip("wikitext-103-raw")
    )
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    monkeypatch.delenv("LUMENLM_OFFLINE", raising=False)
    argv = ["prepare", "wikitext-103", "--vocab-size", "300", "--no-progress"]
    with serve_folder(served) as (base, handler):
        monkeypatch.setenv("LUMENLM_DATA_URL", base)
        assert main([*argv, "--out", str(tmp_path / "wt")]) == 0
        assert [p for p, _ in handler.requests] == ["/wikitext-103/wikitext-103-raw-v1.zip"]
        assert main([*argv, "--out", str(tmp_path / "wt2")]) == 0
        assert len(handler.requests) == 1  # the second run uses the cache
    cached = tmp_path / "cache" / "wikitext-103"
    assert sorted(p.name for p in cached.iterdir()) == [
        "wiki.test.raw",
        "wiki.train.raw",
        "wiki.valid.raw",
        "wikitext-103-raw-v1.zip",
    ]
    meta_bytes = (tmp_path / "wt" / "meta.json").read_bytes()
    assert meta_bytes == (tmp_path / "wt2" / "meta.json").read_bytes()
    meta = json.loads(meta_bytes)
    source = meta["source"]
    assert meta["dataset"] == "wikitext-103" and source["origin"] == "download"
    assert source["urls"] == [
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-raw-v1.zip"
    ]
    assert source["split_rule"] == "official splits" and source["notes"] == []
    assert meta["cleaning"]["whitespace"] == "keep"
    # no official digest is known: each file's computed sha256 is recorded, unmatched
    for entry in source["files"]:
        digest = hashlib.sha256((cached / entry["name"]).read_bytes()).hexdigest()
        assert entry["sha256"] == digest and "matches_official_sha256" not in entry
    assert [e["role"] for e in source["files"]] == [
        "official train",
        "official val",
        "official test",
    ]
    assert all(meta["splits"][s]["documents"] == 8 for s in ("train", "val", "test"))


def test_wikitext_103_offline_and_local_copy(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMENLM_DATA", str(tmp_path / "data"))
    argv = ["prepare", "wikitext-103", "--vocab-size", "300", "--no-progress", "--offline"]
    assert main([*argv, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline" in err
    assert "WikiText-103 raw v1" in err and f"{tmp_path / 'data' / 'wikitext-103'}/" in err
    # the layout of $LUMENLM_DATA/wikitext-103-raw/ mirrors wikitext-2's
    local = tmp_path / "data" / "wikitext-103-raw"
    local.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(_wikitext_zip("wikitext-103-raw"))) as zf:
        for split in ("valid", "test"):  # no train file: carved from valid, with a note
            (local / f"wiki.{split}.raw").write_bytes(zf.read(f"wikitext-103-raw/wiki.{split}.raw"))
    assert main([*argv, "--out", str(tmp_path / "o"), "--val-ratio", "0.3"]) == 0
    source = json.loads((tmp_path / "o" / "meta.json").read_text())["source"]
    assert source["origin"] == "$LUMENLM_DATA" and "urls" not in source
    assert [f["name"] for f in source["files"]] == ["wiki.valid.raw", "wiki.test.raw"]
    (note,) = source["notes"]
    assert note.startswith("wiki.train.raw is missing: train and val were carved from wiki.valid")
    assert note.endswith("add wiki.train.raw (from wikitext-103-raw-v1.zip) to train on it")
