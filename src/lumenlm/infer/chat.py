"""Chat templates, history trimming and the terminal chat loop (`lumenlm chat`).

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

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TextIO

from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.text import check_text, replace_invalid

if TYPE_CHECKING:
    from lumenlm.model import GPT


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


class ChatSession:
    """Conversation state + one call per user message that streams the reply."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Any,
        *,
        template: ChatTemplate | None = None,
        params: SamplingParams | None = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or ChatTemplate.from_meta(model.meta)
        self.params = params or SamplingParams(
            max_new_tokens=128, temperature=0.8, top_k=50, top_p=0.95
        )
        self.system = system
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + self.history

    def prompt_for(self, user_message: str) -> str:
        """The prompt for the next reply; ValueError when a message is not valid Unicode."""
        msgs = [*self.messages(), {"role": "user", "content": user_message}]
        for m in msgs:
            check_text(m["content"], f"the {m['role']} message")
        return render_fitted(
            msgs,
            self.template,
            self.tokenizer,
            self.model.config.context_length,
            self.params.max_new_tokens,
        )

    def send(self, user_message: str) -> Iterator[str]:
        """Stream the reply's text deltas; the turn is added to the history at the end."""
        from dataclasses import replace

        from lumenlm.infer.generate import stream_generate

        prompt = self.prompt_for(user_message)
        stop = list(dict.fromkeys([*self.params.stop, *self.template.stop]))
        params = replace(self.params, stop=stop)
        pieces: list[str] = []
        first = True
        for ev in stream_generate(self.model, prompt, params, tokenizer=self.tokenizer):
            text = ev.text
            if first and text:  # the template ends in "Assistant:"; drop the model's space
                text = text.lstrip(" ")
                first = not text
            if text:
                pieces.append(text)
                yield text
        self.history += [
            {"role": "user", "content": user_message},
            {"role": "assistant", "content": "".join(pieces).strip()},
        ]


HELP = "commands: /reset (forget the conversation), /system TEXT (set; /system alone clears), /exit"
MAX_LINE = 100_000  # characters of one input line kept; the rest of the line is skipped


def run_repl(
    session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Read user lines, stream replies. Works interactively and with piped stdin.

    Input that is not UTF-8 does not stop the loop: `sys.stdin` is read with
    `errors="replace"` and what is still not valid Unicode is replaced too, so an
    undecodable byte reaches the model as U+FFFD. A line longer than `MAX_LINE`
    characters keeps its start (with a notice), so one endless line cannot fill memory.
    """
    if stdin is None:
        stdin = sys.stdin
        if hasattr(stdin, "reconfigure"):
            stdin.reconfigure(errors="replace")
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    if interactive:
        stdout.write(f"lumenlm chat; {HELP}\n")
    while True:
        if interactive:
            stdout.write("User: ")
            stdout.flush()
        line = stdin.readline(MAX_LINE + 1)
        if not line:  # EOF
            if interactive:
                stdout.write("\n")
            return 0
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while (rest := stdin.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass
            line = line[:MAX_LINE]
            stdout.write(f"(line cut to its first {MAX_LINE} characters)\n")
        msg = replace_invalid(line.rstrip("\r\n"))
        if not msg.strip():
            continue
        if msg.startswith("/"):
            cmd, _, arg = msg.partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/reset":
                session.reset()
                stdout.write("(conversation reset)\n")
            elif cmd == "/system":
                session.system = arg.strip() or None
                stdout.write(f"(system prompt {'set' if session.system else 'cleared'})\n")
            else:
                stdout.write(f"(unknown command {cmd}; {HELP})\n")
            stdout.flush()
            continue
        if not interactive:
            stdout.write(f"User: {msg}\n")
        stdout.write("Assistant: ")
        stdout.flush()
        for delta in session.send(msg):
            stdout.write(delta)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
