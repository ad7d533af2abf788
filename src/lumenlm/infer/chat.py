"""The terminal chat loop (`lumenlm chat`) and one conversation's state.

Templates (how messages become a prompt, how much history fits) are owned by
`lumenlm.data.chat_template`, shared with fine-tuning and export.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from lumenlm.data.chat_template import ChatTemplate, render_fitted
from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.text import check_text, replace_invalid

if TYPE_CHECKING:
    from lumenlm.model import GPT


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
        # A stop that is one special token (the "turns" template's <|end|>) is never
        # decoded as text, so it stops by id.
        ids = [*self.params.stop_token_ids, *self.template.stop_token_ids(self.tokenizer)]
        params = replace(self.params, stop=stop, stop_token_ids=tuple(dict.fromkeys(ids)))
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
