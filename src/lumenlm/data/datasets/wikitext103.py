"""WikiText-103 (raw v1): WikiText-2's layout with about 50 times the training text.

The zip (about 190 MB; some 540 MB unpacked) comes from the same host as WikiText-2.
No official sha256 of the zip or of its files is pinned here, because none is known
to this project: the download is checked for completeness only, and meta.json records
the sha256 that `prepare` computes for every file it used (without a
``matches_official_sha256`` entry), so two runs can still be compared.
"""

from __future__ import annotations

from lumenlm.data.corpus import DatasetSpec
from lumenlm.data.datasets._wikitext import WIKI_EXPECTED, wikitext_builder, zip_members
from lumenlm.data.download import RemoteFile

SPEC = DatasetSpec(
    name="wikitext-103",
    build=wikitext_builder(
        "wikitext-103",
        "WikiText-103",
        "wikitext-103-raw",
        "; add wiki.train.raw (from wikitext-103-raw-v1.zip) to train on it",
    ),
    dirnames=("wikitext-103", "wikitext-103-raw", "wikitext-103-raw-v1"),
    remote=(
        RemoteFile(
            "wikitext-103-raw-v1.zip",
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-raw-v1.zip",
            members=zip_members("wikitext-103-raw"),
        ),
    ),
    expected=f"{WIKI_EXPECTED} (WikiText-103 raw v1)",
    whitespace="keep",
    val_ratio=0.1,
    test_ratio=0.1,
)
