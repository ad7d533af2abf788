"""Chat templates: how messages become prompt text, and how much history fits.

One owner for the template, used by `chat` and `serve` (infer), by fine-tuning (train)
and by export (a Jinja `chat_template`), so all of them render the same text.

The default template is the Librarian card's plain-text format:

    {system}\\n            (only when a system prompt is set)
    User: {message}\\n
    Assistant: {reply}\\n
    User: {message}\\n
    Assistant:             <- the model continues from here; stop at "\\nUser:"

There is no trailing space after "Assistant:": byte-level BPE puts the space in
front of the next word's token (" Hello"), so the model should produce it.

A model can carry its own template in its model dir's config.json under "chat"
(written with `save_model(..., extra={"chat": {...}})`); any key left out keeps the
default:

    "chat": {"system": "{content}\\n", "user": "User: {content}\\n",
             "assistant": "Assistant: {content}\\n", "generation_prompt": "Assistant:",
             "stop": ["\\nUser:"]}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ChatTemplate:
    """How messages become a prompt, and which strings end the assistant's turn."""

    system: str = "{content}\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant:"
    stop: list[str] = field(default_factory=lambda: ["\nUser:"])

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> ChatTemplate:
        """The template in a model's config.json document (key "chat"), else the default."""
        doc = (meta or {}).get("chat") or {}
        if not isinstance(doc, dict):
            raise ValueError('config.json "chat" must be an object')
        names = {f.name for f in fields(cls)}
        unknown = set(doc) - names
        if unknown:
            raise ValueError(f'config.json "chat" has unknown key(s): {", ".join(sorted(unknown))}')
        tpl = cls(**doc)
        if isinstance(tpl.stop, str):
            tpl.stop = [tpl.stop]
        return tpl

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Messages ({"role": system|user|assistant, "content": str}) -> prompt text."""
        parts = []
        for m in messages:
            role, content = m["role"], m["content"]
            if role == "assistant":
                content = content.strip()
            fmt = {"system": self.system, "user": self.user, "assistant": self.assistant}.get(role)
            if fmt is None:
                raise ValueError(f"unknown chat role {role!r} (system, user or assistant)")
            parts.append(fmt.replace("{content}", content))
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


def fit_history(
    messages: list[dict[str, str]],
    template: ChatTemplate,
    count_tokens: Any,
    max_prompt_tokens: int,
) -> list[dict[str, str]]:
    """Drop the oldest turns (never a system message nor the last message) until the
    rendered prompt fits in `max_prompt_tokens`. `count_tokens(text) -> int`.

    System messages keep their places. Each message is tokenized once (linear time, so
    a long request cannot cost quadratic CPU); the sum of per-message counts picks the
    cut, then a few full renders correct for merges across message boundaries.
    If even the system messages + last message are too long, that is returned anyway:
    `lumenlm chat` then generates from the prompt's last tokens, and the server refuses
    the request (400, context_length_exceeded).
    """
    n = len(messages)
    if n <= 1:
        return list(messages)
    costs = [count_tokens(template.render([m], add_generation_prompt=False)) for m in messages]
    total = count_tokens(template.generation_prompt) + sum(costs)

    def droppable(i: int) -> bool:
        return i < n - 1 and messages[i]["role"] != "system"

    def kept(start: int) -> list[dict[str, str]]:
        return [m for i, m in enumerate(messages) if i >= start or not droppable(i)]

    start = 0

    def advance() -> None:
        nonlocal start, total
        if droppable(start):
            total -= costs[start]
        start += 1
        # A conversation resumes at a user turn, not mid-reply.
        while start < n - 1 and messages[start]["role"] == "assistant":
            total -= costs[start]
            start += 1

    while start < n - 1 and total > max_prompt_tokens:
        advance()
    for _ in range(8):  # exact check; merges across boundaries shift counts by a few tokens
        if start >= n - 1 or count_tokens(template.render(kept(start))) <= max_prompt_tokens:
            break
        advance()
    return kept(start)


def render_fitted(
    messages: list[dict[str, str]],
    template: ChatTemplate,
    tokenizer: Any,
    context_length: int,
    max_new_tokens: int,
) -> str:
    """The rendered chat prompt, oldest turns dropped (`fit_history`) so that it leaves
    room for the reply: `max_new_tokens`, but at most half the window."""
    budget = context_length - min(max_new_tokens, context_length // 2)
    msgs = fit_history(messages, template, lambda t: len(tokenizer.encode(t).ids), budget)
    return template.render(msgs)
