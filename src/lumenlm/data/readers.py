"""Streaming readers that turn files into documents, one layout per function.

Every reader yields documents one at a time and reads its file in blocks, so a
multi-gigabyte corpus is never held in memory. Text must be UTF-8: a bad byte is
a one-line `DataError` naming the file and byte offset, unless errors="replace".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from lumenlm.errors import DataError

EOT_TEXT = "<|endoftext|>"
BLOCK_BYTES = 1 << 22  # 4 MiB per read
# A WikiText article title: " = Title = " (section headings have "= =" and more).
WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def iter_lines(path: Path, errors: str = "strict") -> Iterator[str]:
    """Lines of a UTF-8 file, newline kept, read in large blocks."""
    offset = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = carry + block
            if not block:
                if data:
                    yield _decode(data, path, offset, errors)
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            text = _decode(data[:cut], path, offset, errors)
            offset += cut
            carry = data[cut:]
            yield from _split_lf(text)


def _split_lf(text: str) -> list[str]:
    """Split on LF only (str.splitlines would also split on \x0b, \x85, U+2028, ...)."""
    lines = text.split("\n")
    # text ends with "\n", so the last element is "" and every other one gets its newline back
    return [line + "\n" for line in lines[:-1]]


def _decode(data: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8 (byte offset {offset + exc.start}); "
            "convert it to UTF-8 or pass --errors replace"
        ) from None


def read_whole(path: Path, errors: str = "strict") -> str:
    """The whole file as one document (for one-document-per-file layouts).

    Decoded in one go: a list of its lines would cost ~60 bytes per line on top.
    """
    return _decode(Path(path).read_bytes(), path, 0, errors)


def eot_documents(path: Path, errors: str = "strict") -> Iterator[str]:
    """Documents separated by a line that is exactly `<|endoftext|>` (TinyStories layout)."""
    buf: list[str] = []
    for line in iter_lines(path, errors):
        if line.strip() == EOT_TEXT:
            yield "".join(buf)
            buf = []
        else:
            buf.append(line)
    if buf:
        yield "".join(buf)


def blank_line_documents(path: Path, errors: str = "strict") -> Iterator[str]:
    """Documents separated by one or more blank (whitespace-only) lines."""
    buf: list[str] = []
    for line in iter_lines(path, errors):
        if line.strip():
            buf.append(line)
        elif buf:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def wikitext_documents(path: Path, errors: str = "strict") -> Iterator[str]:
    """WikiText articles: a new document starts at each top-level ` = Title = ` line.

    Lines are kept byte-for-byte (including the `" \\n"` blank lines), so joining
    the documents gives back the file; lines before the first title join the first article.
    """
    buf: list[str] = []
    seen_title = False
    for line in iter_lines(path, errors):
        if WIKI_TITLE.match(line.rstrip("\n")):
            if seen_title and buf:
                yield "".join(buf)
                buf = []
            seen_title = True
        buf.append(line)
    if buf:
        yield "".join(buf)


def jsonl_documents(path: Path, text_field: str = "text", errors: str = "strict") -> Iterator[str]:
    """One document per JSON line, taken from `text_field`; blank lines are skipped."""
    for lineno, line in enumerate(iter_lines(path, errors), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: malformed JSON ({exc.msg}); fix or remove that line"
            ) from None
        if not isinstance(record, dict) or text_field not in record:
            raise DataError(
                f"{path}:{lineno}: no field {text_field!r} in this JSON line; "
                "choose the field with --text-field"
            )
        value = record[text_field]
        if not isinstance(value, str):
            raise DataError(
                f"{path}:{lineno}: field {text_field!r} is {type(value).__name__}, not a string"
            )
        yield value


def count_lines(path: Path, errors: str = "strict") -> int:
    """Number of lines (the last one may lack a newline)."""
    return sum(1 for _ in iter_lines(path, errors))
