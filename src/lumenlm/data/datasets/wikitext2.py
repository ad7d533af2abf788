"""WikiText-2 (raw v1): Wikipedia articles with official train/valid/test files.

The Lumiere card's corpus. The zip and all three files are pinned by sha256, so
meta.json says whether the files used are the official ones. Whitespace is kept
as-is by default: the raw files' spacing is part of the benchmark's text.
"""

from __future__ import annotations

from lumenlm.data.corpus import DatasetSpec
from lumenlm.data.datasets._wikitext import WIKI_EXPECTED, wikitext_builder, zip_members
from lumenlm.data.download import RemoteFile

SHA256 = {
    "wiki.train.raw": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}

SPEC = DatasetSpec(
    name="wikitext-2",
    build=wikitext_builder(
        "wikitext-2",
        "WikiText-2",
        "wikitext-2-raw",
        " (36,718 lines); add wiki.train.raw (sha256 6707892f...) to reproduce the Lumiere card",
    ),
    dirnames=("wikitext-2", "wikitext-2-raw", "wikitext-2-raw-v1"),
    remote=(
        RemoteFile(
            "wikitext-2-raw-v1.zip",
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",
            sha256="ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
            size=4_721_645,
            members=zip_members("wikitext-2-raw"),
            member_sha256=SHA256,
        ),
    ),
    expected=f"{WIKI_EXPECTED} (WikiText-2 raw v1)",
    whitespace="keep",
    val_ratio=0.1,
    test_ratio=0.1,
    known_sha256=SHA256,
)
