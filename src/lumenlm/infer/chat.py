"""The terminal chat loop (`lumenlm chat`) and one conversation's state.

Templates (how messages become a prompt, how much history fits) are owned by
`lumenlm.data.chat_template`, shared with fine-tuning and export.

As a person uses it: interactively, lines are read with `input()` and so with
readline's line editing and history (arrow keys, Ctrl-R); Ctrl-C during a reply stops
that reply (what was said so far stays in the conversation), Ctrl-C at an empty prompt
asks once and a second one quits, Ctrl-D quits. A seed seeds the conversation once: its
replies continue one random stream (a second turn does not replay the first's), and
`/reset` starts the stream again. Runs of blank lines in a reply print as one blank
line. Commands: /reset, /system TEXT, /temp X, /help, /exit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from lumenlm.data.chat_template import ChatTemplate, render_fitted
from lumenlm.infer.sampling import SamplingParams, make_generator
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
        self.generator = make_generator(self.params.seed)

    def reset(self) -> None:
        """Forget the conversation; a seeded conversation starts its random stream again."""
        self.history = []
        self.generator = make_generator(self.params.seed)

    def set_temperature(self, value: float) -> None:
        """Change the temperature for the next replies (ValueError outside its range)."""
        self.params = replace(self.params, temperature=value)

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
        """Stream the reply's text deltas; the turn is added to the history at the end,
        also when the caller stops early (Ctrl-C): then with the reply so far."""
        from lumenlm.infer.generate import stream_generate

        prompt = self.prompt_for(user_message)
        stop = list(dict.fromkeys([*self.params.stop, *self.template.stop]))
        # A stop that is one special token (the "turns" template's <|end|>) is never
        # decoded as text, so it stops by id.
        ids = [*self.params.stop_token_ids, *self.template.stop_token_ids(self.tokenizer)]
        params = replace(self.params, stop=stop, stop_token_ids=tuple(dict.fromkeys(ids)))
        pieces: list[str] = []
        first = True
        events = stream_generate(
            self.model, prompt, params, tokenizer=self.tokenizer, generator=self.generator
        )
        try:
            for ev in events:
                text = ev.text
                if first and text:  # the template ends in "Assistant:"; drop the model's space
                    text = text.lstrip(" ")
                    first = not text
                if text:
                    pieces.append(text)
                    yield text
        finally:
            events.close()
            self.history += [
                {"role": "user", "content": user_message},
                {"role": "assistant", "content": "".join(pieces).strip()},
            ]


class BlankLines:
    """Streamed text with every run of blank lines shown as one blank line, and no
    blank lines before the first text or after the last (`feed`, then `finish`).

    Newlines and spaces are held back until the next visible character shows whether
    they separate text (kept, at most two newlines in a row) or end the reply (dropped).
    """

    def __init__(self) -> None:
        self.newlines = 0
        self.space = ""  # spaces/tabs since the last newline, not yet shown
        self.started = False

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                self.newlines += 1
                self.space = ""  # a line's trailing spaces (or a blank line's) never show
            elif ch in " \t\r":
                self.space += ch
            else:
                if self.started:
                    out.append("\n" * min(self.newlines, 2) + self.space)
                out.append(ch)
                self.started = True
                self.newlines, self.space = 0, ""
        return "".join(out)

    def finish(self) -> str:
        """End of the reply: what is held back is trailing whitespace, dropped."""
        self.newlines, self.space = 0, ""
        return ""


HELP = (
    "commands: /reset (forget the conversation), /system TEXT (set; /system alone clears), "
    "/temp X (sampling temperature; 0 = greedy), /help, /exit; Ctrl-C stops a reply, "
    "twice at the prompt quits"
)
MAX_LINE = 100_000  # characters of one input line kept; the rest of the line is skipped


def run_repl(
    session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Read user lines, stream replies. Works interactively and with piped stdin.

    Interactive (both ends a terminal): `input()` with readline editing and history.
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
        _enable_readline()
        stdout.write(f"lumenlm chat; {HELP}\n")
    interrupted = False  # the last thing at the prompt was a Ctrl-C
    while True:
        try:
            line = _read_line(stdin, stdout, interactive)
        except KeyboardInterrupt:
            if interrupted:
                stdout.write("\n")
                return 0
            interrupted = True
            stdout.write("\n(Ctrl-C again to quit, or type a message)\n")
            continue
        interrupted = False
        if line is None:  # EOF
            if interactive:
                stdout.write("\n")
            return 0
        msg = replace_invalid(line)
        if not msg.strip():
            continue
        if msg.startswith("/"):
            if _command(session, msg, stdout):
                return 0
            continue
        if not interactive:
            stdout.write(f"User: {msg}\n")
        stdout.write("Assistant: ")
        stdout.flush()
        _reply(session, msg, stdout)


def _enable_readline() -> None:
    """Line editing and history for `input()` (absent on some platforms: plain input)."""
    try:
        import readline  # noqa: F401
    except ImportError:
        pass


def _read_line(stdin: TextIO, stdout: TextIO, interactive: bool) -> str | None:
    """One user line without its newline; None at EOF."""
    if interactive and stdin is sys.stdin:
        try:
            line = input("User: ")
        except EOFError:
            return None
        return line[:MAX_LINE]
    if interactive:
        stdout.write("User: ")
        stdout.flush()
    line = stdin.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE and not line.endswith("\n"):
        while (rest := stdin.readline(MAX_LINE)) and not rest.endswith("\n"):
            pass
        line = line[:MAX_LINE]
        stdout.write(f"(line cut to its first {MAX_LINE} characters)\n")
    return line.rstrip("\r\n")


def _command(session: ChatSession, msg: str, stdout: TextIO) -> bool:
    """Run a /command; True when it ends the chat."""
    cmd, _, arg = msg.partition(" ")
    if cmd in ("/exit", "/quit"):
        return True
    if cmd == "/reset":
        session.reset()
        stdout.write("(conversation reset)\n")
    elif cmd == "/system":
        session.system = arg.strip() or None
        stdout.write(f"(system prompt {'set' if session.system else 'cleared'})\n")
    elif cmd == "/temp":
        try:
            session.set_temperature(float(arg))
            stdout.write(f"(temperature {session.params.temperature:g})\n")
        except ValueError as exc:
            why = str(exc) if arg.strip() else "give a number"
            stdout.write(f"(/temp X: {why}; e.g. /temp 0.7)\n")
    elif cmd == "/help":
        stdout.write(f"({HELP})\n")
    else:
        stdout.write(f"(unknown command {cmd}; {HELP})\n")
    stdout.flush()
    return False


def _reply(session: ChatSession, msg: str, stdout: TextIO) -> None:
    """Stream one reply; Ctrl-C stops it (the conversation goes on)."""
    blank = BlankLines()
    reply = session.send(msg)
    try:
        for delta in reply:
            out = blank.feed(delta)
            if out:
                stdout.write(out)
                stdout.flush()
    except KeyboardInterrupt:
        reply.close()
        stdout.write(" (stopped)")
    stdout.write(blank.finish() + "\n")
    stdout.flush()
