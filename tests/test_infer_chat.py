"""Chat template, history trimming, the REPL, and the generate/chat CLIs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from infer_helpers import _one_thread, make_model, make_model_dir, tok, tok_path  # noqa: F401 (fixtures)
from lumenlm.cli import main as cli_main
from lumenlm.data.chat_template import ChatTemplate, fit_history
from lumenlm.infer import SamplingParams
from lumenlm.infer.chat import ChatSession, run_repl
from lumenlm.modelio import load

CUSTOM = {
    "user": "<|user|>{content}\n",
    "assistant": "<|assistant|>{content}\n",
    "generation_prompt": "<|assistant|>",
    "stop": ["<|user|>"],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("chat"), "tiny-gpt2", tok_path)


def test_default_template_is_the_librarian_format() -> None:
    tpl = ChatTemplate()
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "Story?"},
    ]
    assert tpl.render(msgs) == "Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Story?\nAssistant:"
    assert tpl.stop == ["\nUser:"]
    with pytest.raises(ValueError, match="role"):
        tpl.render([{"role": "robot", "content": "x"}])


def test_template_stored_with_the_model(tmp_path: Path, tok_path: Path) -> None:  # noqa: F811
    d = make_model_dir(tmp_path, "tiny", tok_path, chat=CUSTOM)
    tpl = ChatTemplate.from_meta(load(d).meta)
    assert tpl.render([{"role": "user", "content": "hi"}]) == "<|user|>hi\n<|assistant|>"
    assert tpl.stop == ["<|user|>"] and tpl.system == ChatTemplate().system
    with pytest.raises(ValueError, match="unknown key"):
        ChatTemplate.from_meta({"chat": {"tmpl": "x"}})


def test_fit_history_keeps_system_and_last_message() -> None:
    tpl = ChatTemplate()
    msgs = [{"role": "system", "content": "S"}]
    for i in range(10):
        msgs += [
            {"role": "user", "content": f"question {i} " * 5},
            {"role": "assistant", "content": f"answer {i} " * 5},
        ]
    msgs.append({"role": "user", "content": "last"})
    count = len  # characters stand in for tokens
    full = count(tpl.render(msgs))
    fitted = fit_history(msgs, tpl, count, full // 3)
    assert fitted[0] == msgs[0] and fitted[-1] == msgs[-1]
    assert fitted[1]["role"] == "user" and len(fitted) < len(msgs)
    assert count(tpl.render(fitted)) <= full // 3
    assert fitted[1:] == msgs[len(msgs) - len(fitted) + 1 :]  # a suffix: the most recent turns
    tiny = fit_history(msgs, tpl, count, 1)  # nothing fits: system + last message
    assert tiny == [msgs[0], msgs[-1]]


def test_fit_history_keeps_every_system_message_in_place() -> None:
    tpl = ChatTemplate()
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Now answer in French."},
        {"role": "user", "content": "how are you"},
    ]
    assert fit_history(msgs, tpl, len, 10_000) == msgs
    assert fit_history(msgs, tpl, len, 1) == [msgs[0], msgs[3], msgs[4]]


def test_fit_history_tokenizes_each_message_about_once() -> None:
    """Linear work: a long request must not cost quadratic CPU on the server."""
    tpl = ChatTemplate()
    msgs = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i} " * 8}
        for i in range(2001)
    ]
    calls = {"n": 0}

    def count(text: str) -> int:
        calls["n"] += 1
        return len(text)

    fitted = fit_history(msgs, tpl, count, 500)
    assert calls["n"] <= len(msgs) + 20
    assert fitted[-1] == msgs[-1] and len(tpl.render(fitted)) <= 500


def test_repl_commands_and_piped_stdin(tok) -> None:  # noqa: F811
    model = make_model("tiny-gpt2")
    session = ChatSession(model, tok, params=SamplingParams(max_new_tokens=8, seed=0))
    stdin = io.StringIO(
        "hello\n/system be kind\n\nhow are you\n/reset\n/bogus\nbye\n/exit\nignored\n"
    )
    out = io.StringIO()
    assert run_repl(session, stdin, out) == 0
    text = out.getvalue()
    assert text.count("Assistant: ") == 3 and "User: hello\n" in text
    assert "(system prompt set)" in text and "(conversation reset)" in text
    assert "unknown command /bogus" in text and "ignored" not in text
    assert session.system == "be kind"
    assert [m["role"] for m in session.history] == ["user", "assistant"]  # after /reset: "bye"
    assert session.history[0]["content"] == "bye"


def test_chat_prompt_trimmed_to_window(tok) -> None:  # noqa: F811
    model = make_model("tiny")  # ctx 64
    session = ChatSession(
        model, tok, params=SamplingParams(max_new_tokens=16, temperature=0), system="sys"
    )
    for i in range(12):
        list(session.send(f"tell me about the cat number {i}"))
    prompt = session.prompt_for("and now?")
    assert len(tok.encode(prompt).ids) <= 64 - 16
    assert prompt.startswith("sys\nUser:") and prompt.endswith("User: and now?\nAssistant:")


def test_cli_chat_piped(model_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi there\n/exit\n"))
    assert cli_main(["chat", str(model_dir), "--max-new-tokens", "6", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("User: Hi there\nAssistant: ")


def test_cli_generate(model_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["generate", str(model_dir), "--seed", "3", "--max-new-tokens", "10", "--top-k", "20"]
    assert cli_main([*base, "--prompt", "The cat", "--num-samples", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["prompt"] == "The cat" for r in rows)
    assert cli_main([*base, "--prompt", "The cat", "--num-samples", "3"]) == 0
    plain = capsys.readouterr().out
    assert cli_main([*base, "--prompt", "The cat", "--num-samples", "3", "--stream"]) == 0
    assert capsys.readouterr().out == plain  # streaming prints the same text
    assert plain.split("\n---\n")[0].rstrip("\n") == "The cat" + rows[0]["completion"].rstrip("\n")
    f = tmp_path / "p.txt"
    f.write_text("The cat")
    assert cli_main([*base, "--prompt-file", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["completion"] == rows[0]["completion"]
    assert cli_main([*base, "--prompt", "The cat", "--greedy", "--json", "--no-cache"]) == 0
    nocache = json.loads(capsys.readouterr().out)
    assert cli_main([*base, "--prompt", "The cat", "--greedy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == nocache


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    no_tok = make_model_dir(tmp_path, "tiny", None)
    assert cli_main(["generate", str(no_tok), "--prompt", "x"]) != 0
    err = capsys.readouterr().err
    assert "no tokenizer" in err and err.count("\n") == 1
    assert cli_main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) != 0
    assert capsys.readouterr().err.count("\n") == 1
    assert cli_main(["generate", str(no_tok), "--prompt", "x", "--top-p", "2"]) != 0
    assert "--top-p" in capsys.readouterr().err


def test_a_seed_seeds_the_conversation_once(tok) -> None:  # noqa: F811
    model = make_model("tiny-gpt2")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, ignore_eos=True)

    def conversation(session: ChatSession) -> list[str]:
        return ["".join(session.send("hello")) for _ in range(2)]

    a = ChatSession(model, tok, params=params)
    first = conversation(a)
    assert first == conversation(ChatSession(model, tok, params=params))  # reproducible
    # the same prompt twice (history cleared, stream not): the second draw continues the
    # stream instead of replaying the first (what re-seeding every turn would do)
    b = ChatSession(model, tok, params=params)
    one = "".join(b.send("hello"))
    b.history = []
    assert "".join(b.send("hello")) != one
    a.reset()
    assert conversation(a) == first  # /reset starts the stream again


def test_blank_lines_collapse_and_a_stopped_reply_is_kept(tok) -> None:  # noqa: F811
    from lumenlm.infer.chat import BlankLines

    b = BlankLines()
    parts = ["\n", "Hi", "\n", "\n", " \n", "\n\n", "  there", "\n\n\n"]
    assert "".join(b.feed(p) for p in parts) + b.finish() == "Hi\n\n  there"
    session = ChatSession(make_model("tiny-gpt2"), tok, params=SamplingParams(max_new_tokens=50))
    reply = session.send("hello")
    got = next(reply) + next(reply)
    reply.close()  # what Ctrl-C does
    assert session.history[-1] == {"role": "assistant", "content": got.strip()}


def test_repl_temp_and_help(tok) -> None:  # noqa: F811
    session = ChatSession(make_model("tiny-gpt2"), tok, params=SamplingParams(max_new_tokens=2))
    out = io.StringIO()
    run_repl(session, io.StringIO("/temp 0.3\n/temp hot\n/temp 1000\n/help\n"), out)
    text = out.getvalue()
    assert "(temperature 0.3)" in text and session.params.temperature == 0.3
    assert text.count("/temp X:") == 2 and "(commands: /reset" in text
