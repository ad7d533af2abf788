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

Named templates (`TEMPLATES`, `lumenlm finetune --template NAME`): "plain" is the default
above; "turns" marks every turn with special tokens, `<|user|>...<|end|>`, and stops at
`<|end|>`, the single end-of-turn token a fine-tuned model learns to emit (trained
up to and including it; the newline after it is layout, not trained). A template's
`special_tokens` are the strings that must be single tokens of the tokenizer; fine-tuning
adds those missing (see `lumenlm.train.vocab`).

Fine-tuning needs to know which characters of the rendered text the model is trained to
produce: `ChatTemplate.segments` renders the same text as `render` as a list of
`Segment`s (role, text, trained), where an assistant turn's prefix ("Assistant: ",
"<|assistant|>") is not trained and its content and closing text ("\\n", "<|end|>") are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered conversation: which message it belongs to (`index`, -1
    for the generation prompt), its role, its text, and whether fine-tuning trains the
    model to produce it."""

    index: int
    role: str
    text: str
    trained: bool


@dataclass
class ChatTemplate:
    """How messages become a prompt, and which strings end the assistant's turn."""

    system: str = "{content}\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant:"
    stop: list[str] = field(default_factory=lambda: ["\nUser:"])
    special_tokens: list[str] = field(default_factory=list)
    """Strings that must be single tokens (fine-tuning adds the missing ones)."""

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
        return "".join(seg.text for seg in self.segments(messages, add_generation_prompt))

    def segments(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> list[Segment]:
        """The text `render` produces, cut into segments that say what is trained: an
        assistant turn is its prefix (not trained), then its content and the template's
        closing text up to and including a stop string found in it ("<|end|>" of
        "<|end|>\\n"; all of the plain template's "\\n"), which is trained (the model must
        learn to end its turn), then the rest of the closing text. Everything else is
        not trained. Empty segments are left out."""
        out: list[Segment] = []
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            fmt = {"system": self.system, "user": self.user, "assistant": self.assistant}.get(role)
            if fmt is None:
                raise ValueError(f"unknown chat role {role!r} (system, user or assistant)")
            if role == "assistant":
                content = content.strip()
                before, found, after = fmt.partition("{content}")
                if not found:  # no content slot: the whole turn is fixed text
                    out.append(Segment(i, role, fmt, False))
                    continue
                after = after.replace("{content}", content)
                cut = min((after.index(t) + len(t) for t in self.stop if t in after), default=None)
                if cut is None:
                    cut = len(after)
                out.append(Segment(i, role, before, False))
                out.append(Segment(i, role, content + after[:cut], True))
                out.append(Segment(i, role, after[cut:], False))
            else:
                out.append(Segment(i, role, fmt.replace("{content}", content), False))
        if add_generation_prompt:
            out.append(Segment(-1, "assistant", self.generation_prompt, False))
        return [seg for seg in out if seg.text]

    def check(self, where: str) -> None:
        """Refuse a template fine-tuning cannot use (one-line ConfigError naming `where`):
        every role needs a `{content}` slot, and there must be an assistant role."""
        if not isinstance(self.assistant, str) or "{content}" not in self.assistant:
            raise ConfigError(
                f'{where}: the chat template has no assistant role (its "assistant" '
                "needs a {content} slot); use --template plain or turns, or fix the template"
            )
        for role in ("system", "user"):
            fmt = getattr(self, role)
            if not isinstance(fmt, str) or "{content}" not in fmt:
                raise ConfigError(
                    f'{where}: the chat template\'s "{role}" has no {{content}} slot; '
                    "fix the template or use --template plain or turns"
                )
        if not all(isinstance(t, str) and t for t in self.special_tokens):
            raise ConfigError(f"{where}: special_tokens must be non-empty strings")

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids of the stop strings that are single special tokens of `tokenizer` (a
        decoder that skips special tokens never shows them as text, so generation must
        stop on the id)."""
        specials = set(self.special_tokens)
        ids = []
        for s in self.stop:
            i = tokenizer.token_to_id(s) if s in specials else None
            if i is not None:
                ids.append(int(i))
        return ids


TURNS = ChatTemplate(
    system="<|system|>{content}<|end|>\n",
    user="<|user|>{content}<|end|>\n",
    assistant="<|assistant|>{content}<|end|>\n",
    generation_prompt="<|assistant|>",
    stop=["<|end|>"],
    special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
)
"""Turns marked by special tokens; the model ends its reply with the one `<|end|>` token."""

TEMPLATES: dict[str, ChatTemplate] = {"plain": ChatTemplate(), "turns": TURNS}
"""The named templates of `--template NAME`."""


def get_template(name: str) -> ChatTemplate:
    """A named template (`TEMPLATES`), or a JSON file holding one (the keys of config.json's
    "chat"); a one-line ConfigError otherwise."""
    if name in TEMPLATES:
        tpl = TEMPLATES[name]
        return ChatTemplate(**tpl.to_dict())  # a copy: callers may edit it
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        raise ConfigError(
            f"unknown chat template {name!r}; use one of {', '.join(TEMPLATES)} or a .json file"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        tpl = ChatTemplate.from_meta({"chat": doc})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a chat template ({str(exc).splitlines()[0]})") from None
    tpl.check(str(path))
    return tpl


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
