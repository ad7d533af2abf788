"""Text cleaning: Unicode normalization, control characters, whitespace, exact de-duplication.

Cleaning works on one document at a time and never merges or splits documents,
so a document boundary is never lost. The settings are recorded in `meta.json`
so a prepared dataset says exactly what was done to its text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from lumenlm.errors import DataError

NORMALIZATIONS = ("NFC", "NFKC", "none")
WHITESPACE_MODES = ("tidy", "keep")

# Control characters (Unicode category Cc) other than tab and newline, plus the
# byte-order mark, are dropped; carriage returns are handled first (CRLF/CR -> LF).
_CONTROL_TABLE = {
    cp: None
    for cp in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0xFEFF]
    if cp not in (0x09, 0x0A)
}
_TRAILING_WS = re.compile(r"[ \t]+(?=\n)")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleanConfig:
    """What `clean_text` does.

    normalization: Unicode normal form ("NFC" keeps meaning, "NFKC" also folds
        compatibility characters, "none" leaves code points alone).
    whitespace: "tidy" strips trailing spaces on lines, collapses 3+ newlines to 2
        and strips the document's ends; "keep" leaves whitespace exactly as-is
        (used for WikiText raw, whose spacing is part of the benchmark text).
    dedup: drop exact duplicate documents (after cleaning); the first occurrence wins.
    """

    normalization: str = "NFC"
    whitespace: str = "tidy"
    dedup: bool = False

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise DataError(
                f"unknown normalization {self.normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
            )
        if self.whitespace not in WHITESPACE_MODES:
            raise DataError(
                f"unknown whitespace mode {self.whitespace!r}; use one of {', '.join(WHITESPACE_MODES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Settings as recorded in meta.json."""
        d = asdict(self)
        d["control_characters"] = "removed (except tab and newline); CRLF/CR -> LF"
        return d


def clean_text(text: str, config: CleanConfig) -> str:
    """Return the cleaned form of one document (may be empty: the caller drops it)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_CONTROL_TABLE)
    if config.normalization != "none" and not unicodedata.is_normalized(config.normalization, text):
        text = unicodedata.normalize(config.normalization, text)
    if config.whitespace == "tidy":
        text = _TRAILING_WS.sub("", text)
        text = _MANY_NEWLINES.sub("\n\n", text)
        text = text.strip()
    elif not text.strip():
        text = ""  # a whitespace-only document carries nothing
    return text


def doc_digest(text: str) -> bytes:
    """A 16-byte fingerprint of a document's text (for exact de-duplication)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class Deduplicator:
    """Remembers document fingerprints; `is_new` is False for an exact repeat.

    Memory is ~100 bytes per distinct document (a set of 16-byte digests), which
    is fine even for the full TinyStories (~2M stories).
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.dropped = 0

    def is_new(self, text: str) -> bool:
        key = doc_digest(text)
        if key in self._seen:
            self.dropped += 1
            return False
        self._seen.add(key)
        return True

    def __len__(self) -> int:
        return len(self._seen)
