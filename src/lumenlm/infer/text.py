"""Text coming in: strings that cannot be encoded as UTF-8 (lone surrogates).

A Python `str` may hold lone UTF-16 surrogates (U+D800 to U+DFFF): JSON's `"\\ud800"`
decodes to one, and so do undecodable bytes in a command line or a pipe read with
Python's `surrogateescape`. The tokenizer cannot take them (it raises a TypeError
deep inside), so they are dealt with where text enters:

- the library and the server refuse them with a message that says where
  (`check_text`, a ValueError; the server answers 400);
- the CLI replaces them (`replace_invalid`), as it decodes its input with
  `errors="replace"`: an undecodable byte becomes U+FFFD, which is what a terminal
  user piping in a Latin-1 file or random bytes expects rather than an error.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def first_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text`, or None when it is valid Unicode."""
    m = _SURROGATE.search(text)
    return None if m is None else m.start()


def check_text(text: str, what: str = "text") -> str:
    """`text` unchanged, or ValueError naming `what` and the first lone surrogate."""
    i = first_surrogate(text)
    if i is not None:
        raise ValueError(
            f"{what} is not valid Unicode: lone surrogate U+{ord(text[i]):04X} at character "
            f"{i}; send UTF-8 text (escape sequences \\ud800-\\udfff only as valid pairs)"
        )
    return text


def replace_invalid(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD; bytes that `surrogateescape`
    smuggled in (U+DC80-U+DCFF) are decoded back first, so valid UTF-8 split across
    them is kept."""
    if first_surrogate(text) is None:
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return _SURROGATE.sub(REPLACEMENT, text)
