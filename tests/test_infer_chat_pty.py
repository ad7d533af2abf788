"""`lumenlm chat` under a real terminal (a pty from `pty.fork`, so the chat is the
terminal's foreground process and Ctrl-C is the line discipline's SIGINT): readline
editing (Ctrl-A) and history (Up), /temp and /help, Ctrl-C stops a reply and the chat
goes on, two Ctrl-C at the prompt quit with status 0. Slow (a CLI process with torch)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from infer_helpers import make_model_dir, tok_path  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty"),
]


class Terminal:
    """A child process on a pty; `expect` reads its output until a pattern shows."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
        env.pop("LUMENLM_API_KEY", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            os.execve(argv[0], argv, env)
        self.out = ""
        self.seen = 0  # `expect` searches from here

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.out, self.seen)
            if m:
                self.seen = m.end()
                return m.group(0)
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared; output so far:\n{self.out[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(
                        f"{pattern!r}: the chat ended; output:\n{self.out[-3000:]}"
                    )
                self.out += chunk.decode(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining so the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("the chat did not exit")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("pty"), "tiny-gpt2", tok_path)


def test_chat_in_a_terminal(model_dir: Path) -> None:
    argv = [sys.executable, "-m", "lumenlm", "chat", str(model_dir), "--no-verify"]
    argv += ["--max-new-tokens", "100000", "--ignore-eos", "--seed", "1", "--temperature", "1"]
    term = Terminal(argv)
    try:
        term.expect(r"lumenlm chat;")
        term.expect(r"User: ")
        # readline editing: Ctrl-A goes to the start of the line, so "help" becomes "/help"
        term.send("help\x01/\r")
        term.expect(r"\(commands: /reset")
        term.expect(r"User: ")
        term.send("/temp 0.5\r")
        term.expect(r"\(temperature 0\.5\)")
        term.expect(r"User: ")
        term.send("\x1b[A\r")  # Up: the last line again, from readline's history
        term.expect(r"\(temperature 0\.5\)")
        term.expect(r"User: ")
        term.send("tell me a story\r")
        term.expect(r"Assistant: ")
        term.expect(r"\S{3}")  # the reply is streaming (100000 tokens asked for)
        term.send("\x03")  # Ctrl-C: stops this reply only
        term.expect(r" \(stopped\)\r?\n")
        term.expect(r"User: ")
        term.send("and then?\r")
        term.expect(r"Assistant: \S")
        term.send("\x03")
        term.expect(r"\(stopped\)")
        term.expect(r"User: ")
        term.send("\x03")  # at the prompt: asks once
        term.expect(r"Ctrl-C again to quit")
        term.expect(r"User: ")
        term.send("\x03")
        assert term.wait() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
            os.waitpid(term.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(term.fd)
