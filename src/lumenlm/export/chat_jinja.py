"""A `ChatTemplate` as the Jinja `chat_template` that transformers, vLLM and llama.cpp run.

lumenlm renders a conversation with `lumenlm.data.chat_template.ChatTemplate.render`:
each message's role format with `{content}` replaced (an assistant's content stripped),
then the generation prompt. Other ecosystems read a Jinja template instead
(`tokenizer_config.json` "chat_template", GGUF `tokenizer.chat_template`), so export
translates the one into the other, and the tests check `apply_chat_template` renders
exactly what `render` does.

Every fixed piece of text is emitted as a quoted Jinja string inside `{{ ... }}`, never
as raw template text: transformers compiles templates with `trim_blocks` and
`lstrip_blocks`, which would eat the newlines that our formats end with, and a format
may hold `{{` or `{%` of its own. Special tokens (`<|user|>`) are plain text here; the
tokenizer turns them into their single ids.
"""

from __future__ import annotations

from lumenlm.data.chat_template import ChatTemplate


def jinja_string(text: str) -> str:
    """`text` as a single-quoted Jinja string literal that evaluates back to exactly `text`.

    Only the backslash, the quote and the line breaks are escaped (as \\\\, \\', \\n,
    \\r, \\t): Jinja decodes escapes in literals and turns a raw \\r\\n into \\n, and
    llama.cpp's own template engine knows these escapes but not \\u. Other characters,
    non-ASCII included, stay as they are.
    """
    return "'" + text.translate(_ESCAPES) + "'"


_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _turn(fmt: str, content: str) -> str:
    """A Jinja expression for `fmt` with every `{content}` replaced by `content`."""
    pieces = fmt.split("{content}")
    parts: list[str] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(content)
        if piece:
            parts.append(jinja_string(piece))
    return "{{ " + " ~ ".join(parts) + " }}" if parts else ""


def _literal(text: str) -> str:
    """A Jinja expression printing `text` as it is (no `{content}` slot)."""
    return "{{ " + jinja_string(text) + " }}" if text else ""


def to_jinja(template: ChatTemplate) -> str:
    """The Jinja chat template that renders what `template.render` renders.

    Reads `messages` and `add_generation_prompt` (the names transformers passes); an
    unknown role raises through transformers' `raise_exception`, as `render` raises.
    """
    content = "message['content']"
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}" + _turn(template.system, content) + ""
        "{%- elif message['role'] == 'user' -%}" + _turn(template.user, content) + ""
        "{%- elif message['role'] == 'assistant' -%}"
        + _turn(template.assistant, "(message['content'] | trim)")
        + "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role'] ~ "
        "' (system, user or assistant)') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + _literal(template.generation_prompt) + "{%- endif -%}"
    )
